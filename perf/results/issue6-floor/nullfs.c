// The floor of FUSE metadata rates on a machine: a libfuse3 low-level file
// system that keeps names and attributes in memory and does nothing else
// (no log, no data). Whatever creates.c measures through it is the kernel's
// FUSE round trips and scheduling alone; no daemon can do better than that
// with the same requests. Mounted with default_permissions and the same
// 1 s entry/attribute/negative timeouts as a DatenLord node.
// Build: cc -O2 -o nullfs nullfs.c $(pkg-config --cflags --libs fuse3)
// Run:   ./nullfs MOUNTPOINT [-s] [-o clone_fd]   (foreground; umount ends it)
#define FUSE_USE_VERSION 34
#include <errno.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_INODES (1 << 20)
#define BUCKETS (1 << 21)
#define TTL 1.0

struct node {
    fuse_ino_t parent;
    char *name;
    mode_t mode;
    nlink_t nlink;
    int used;
    long next; // hash chain (index), -1 ends
};

static struct node nodes[MAX_INODES];
static long buckets[BUCKETS];
static fuse_ino_t next_ino = 2;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned long hash(fuse_ino_t parent, const char *name) {
    unsigned long h = 1469598103934665603UL ^ parent;
    for (; *name; name++) h = (h ^ (unsigned char)*name) * 1099511628211UL;
    return h & (BUCKETS - 1);
}

static long find(fuse_ino_t parent, const char *name) {
    for (long i = buckets[hash(parent, name)]; i >= 0; i = nodes[i].next)
        if (nodes[i].used && nodes[i].parent == parent && !strcmp(nodes[i].name, name)) return i;
    return -1;
}

static void fill(fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_mode = nodes[ino].mode;
    st->st_nlink = nodes[ino].nlink;
    st->st_uid = getuid();
    st->st_gid = getgid();
}

static void reply_entry(fuse_req_t req, fuse_ino_t ino) {
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = ino;
    e.attr_timeout = TTL;
    e.entry_timeout = TTL;
    fill(ino, &e.attr);
    fuse_reply_entry(req, &e);
}

static void nl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    pthread_mutex_lock(&lock);
    long i = find(parent, name);
    if (i < 0) {
        pthread_mutex_unlock(&lock);
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        e.entry_timeout = TTL; // a negative entry, as DatenLord answers
        fuse_reply_entry(req, &e);
        return;
    }
    reply_entry(req, (fuse_ino_t)i);
    pthread_mutex_unlock(&lock);
}

static void nl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    struct stat st;
    pthread_mutex_lock(&lock);
    if (ino >= MAX_INODES || !nodes[ino].used) {
        pthread_mutex_unlock(&lock);
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill(ino, &st);
    pthread_mutex_unlock(&lock);
    fuse_reply_attr(req, &st, TTL);
}

static long add(fuse_ino_t parent, const char *name, mode_t mode) {
    if (find(parent, name) >= 0) return -EEXIST;
    if (next_ino >= MAX_INODES) return -ENOSPC;
    long i = (long)next_ino++;
    unsigned long b = hash(parent, name);
    nodes[i] = (struct node){parent, strdup(name), mode, S_ISDIR(mode) ? 2 : 1, 1, buckets[b]};
    buckets[b] = i;
    return i;
}

static void remove_name(fuse_req_t req, fuse_ino_t parent, const char *name) {
    pthread_mutex_lock(&lock);
    long i = find(parent, name);
    if (i >= 0) nodes[i].used = 0; // the chain keeps it; lookups skip it
    pthread_mutex_unlock(&lock);
    fuse_reply_err(req, i < 0 ? ENOENT : 0);
}

static void nl_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
    pthread_mutex_lock(&lock);
    long i = add(parent, name, S_IFDIR | (mode & 07777));
    if (i < 0) {
        pthread_mutex_unlock(&lock);
        fuse_reply_err(req, (int)-i);
        return;
    }
    reply_entry(req, (fuse_ino_t)i);
    pthread_mutex_unlock(&lock);
}

static void nl_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
    struct fuse_entry_param e;
    pthread_mutex_lock(&lock);
    long i = add(parent, name, S_IFREG | (mode & 07777));
    if (i < 0) {
        pthread_mutex_unlock(&lock);
        fuse_reply_err(req, (int)-i);
        return;
    }
    memset(&e, 0, sizeof e);
    e.ino = (fuse_ino_t)i;
    e.attr_timeout = TTL;
    e.entry_timeout = TTL;
    fill((fuse_ino_t)i, &e.attr);
    pthread_mutex_unlock(&lock);
    fi->fh = (uint64_t)i;
    fuse_reply_create(req, &e, fi);
}

static void nl_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
    remove_name(req, parent, name);
}

static void nl_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
    remove_name(req, parent, name);
}

static void nl_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void nl_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    (void)conn;
    nodes[1] = (struct node){1, strdup("/"), S_IFDIR | 0755, 2, 1, -1};
}

static const struct fuse_lowlevel_ops ops = {
    .init = nl_init,
    .lookup = nl_lookup,
    .getattr = nl_getattr,
    .mkdir = nl_mkdir,
    .create = nl_create,
    .unlink = nl_unlink,
    .rmdir = nl_rmdir,
    .flush = nl_ok,
    .release = nl_ok,
    .opendir = nl_ok,
    .releasedir = nl_ok,
};

int main(int argc, char *argv[]) {
    memset(buckets, 0xff, sizeof buckets);
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_cmdline_opts opts;
    if (fuse_parse_cmdline(&args, &opts) != 0 || !opts.mountpoint) {
        fprintf(stderr, "usage: %s MOUNTPOINT [-s] [-o clone_fd]\n", argv[0]);
        return 2;
    }
    fuse_opt_add_arg(&args, "-odefault_permissions");
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se || fuse_session_mount(se, opts.mountpoint) != 0) return 1;
    int ret;
    if (opts.singlethread) {
        ret = fuse_session_loop(se);
    } else {
        struct fuse_loop_config cfg = {.clone_fd = opts.clone_fd, .max_idle_threads = 10};
        ret = fuse_session_loop_mt(se, &cfg);
    }
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return ret ? 1 : 0;
}
