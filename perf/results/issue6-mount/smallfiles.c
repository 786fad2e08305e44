// Single-threaded small-file phases in DIR: create+write 4 KiB+close N
// files, stat them (twice: first pass and a second, attribute-cached pass),
// unlink them. Prints one JSON line with ops/s per phase.
// Build: cc -O2 -o smallfiles smallfiles.c   Run: ./smallfiles DIR N
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: smallfiles DIR N\n"); return 2; }
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    char path[4096], buf[4096];
    memset(buf, 'x', sizeof buf);
    snprintf(path, sizeof path, "%s/sf", dir);
    mkdir(path, 0755);
    double t0 = now();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/sf/f%07d", dir, i);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0) { perror(path); return 1; }
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) { perror("write"); return 1; }
        if (close(fd)) { perror("close"); return 1; }
    }
    double t1 = now();
    struct stat st;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/sf/f%07d", dir, i);
        if (stat(path, &st)) { perror(path); return 1; }
    }
    double t2 = now();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/sf/f%07d", dir, i);
        if (stat(path, &st)) { perror(path); return 1; }
    }
    double t3 = now();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/sf/f%07d", dir, i);
        if (unlink(path)) { perror(path); return 1; }
    }
    double t4 = now();
    snprintf(path, sizeof path, "%s/sf", dir);
    rmdir(path);
    printf("{\"files\": %d, \"create_write_per_s\": %.0f, \"stat_per_s\": %.0f, \"stat2_per_s\": %.0f, \"unlink_per_s\": %.0f}\n",
           n, n / (t1 - t0), n / (t2 - t1), n / (t3 - t2), n / (t4 - t3));
    return 0;
}
