// Single-threaded metadata loops in DIR: create N empty files (open
// O_CREAT|O_EXCL + close), then stat them over and over for SECS seconds,
// then unlink them. Each stat is statx(AT_STATX_FORCE_SYNC): the kernel
// asks the daemon (one GETATTR) even when it caches attributes, while the
// directories' attributes on the path stay cached; mount with a long
// entry_timeout so that the names stay cached too. Prints one JSON line
// with ops/s per phase.
// Build: cc -O2 -o metaloop metaloop.c   Run: ./metaloop DIR N SECS
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: metaloop DIR N SECS\n"); return 2; }
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    double secs = atof(argv[3]);
    char path[4096];
    snprintf(path, sizeof path, "%s/ml", dir);
    if (mkdir(path, 0755)) { perror(path); return 1; }
    double t0 = now();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/ml/f%07d", dir, i);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0) { perror(path); return 1; }
        if (close(fd)) { perror("close"); return 1; }
    }
    double t1 = now();
    struct statx st;
    long stats = 0;
    double t2 = t1;
    while (t2 - t1 < secs) {
        for (int i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/ml/f%07d", dir, i);
            if (statx(AT_FDCWD, path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &st)) {
                perror(path);
                return 1;
            }
        }
        stats += n;
        t2 = now();
    }
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/ml/f%07d", dir, i);
        if (unlink(path)) { perror(path); return 1; }
    }
    double t3 = now();
    snprintf(path, sizeof path, "%s/ml", dir);
    rmdir(path);
    printf("{\"files\": %d, \"create_empty_per_s\": %.0f, \"stat_per_s\": %.0f, \"unlink_per_s\": %.0f}\n",
           n, n / (t1 - t0), stats / (t2 - t1), n / (t3 - t2));
    return 0;
}
