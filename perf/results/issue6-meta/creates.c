// Single-threaded metadata phases in DIR: create+close N empty files
// (O_CREAT|O_EXCL), stat them (after the mount's 1 s cache timeouts ran
// out, so each stat reaches the daemon), unlink them. Prints ops/s per phase as one
// JSON line. Build: cc -O2 -o creates creates.c   Run: ./creates DIR N
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
    if (argc != 3) { fprintf(stderr, "usage: creates DIR N\n"); return 2; }
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/c", dir);
    mkdir(path, 0755);
    double t0 = now();
    double t1c;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/c/f%07d", dir, i);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0 || close(fd)) { perror(path); return 1; }
    }
    t1c = now();
    // Let the kernel's cached entries and attributes expire (the mount's
    // default timeouts are 1 s), so every stat reaches the daemon.
    usleep(1500000);
    double t1s = now();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/c/f%07d", dir, i);
        if (stat(path, &st)) { perror(path); return 1; }
    }
    double t2 = now();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/c/f%07d", dir, i);
        if (unlink(path)) { perror(path); return 1; }
    }
    double t3 = now();
    snprintf(path, sizeof path, "%s/c", dir);
    rmdir(path);
    printf("{\"files\": %d, \"create_per_s\": %.0f, \"stat_per_s\": %.0f, \"unlink_per_s\": %.0f}\n",
           n, n / (t1c - t0), n / (t2 - t1s), n / (t3 - t2));
    return 0;
}
