/* Save TEXT to TARGET through a temp file, checking how many bytes each write(2) took.
 *
 * usage: write_all correct|buggy TARGET TEXT
 *
 * correct: loop until write(2) has taken every byte (a write may return fewer bytes than asked:
 *          a filling disk, a signal), then fsync, close, rename over TARGET, fsync the directory.
 * buggy:   one write(2) whose count is only checked for -1. When the disk fills up it returns a
 *          short count, and the save publishes a truncated file and exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_once(int fd, const char *p, size_t n) {
    return write(fd, p, n) < 0 ? -1 : 0; /* the bug: a short count is taken as success */
}

static int fsync_dir_of(const char *path) {
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    if (close(fd) < 0)
        rc = -1;
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "correct") != 0 && strcmp(argv[1], "buggy") != 0)) {
        fprintf(stderr, "usage: %s correct|buggy TARGET TEXT\n", argv[0]);
        return 2;
    }
    int buggy = strcmp(argv[1], "buggy") == 0;
    const char *target = argv[2], *text = argv[3];
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", target);
    printf("saving %s\n", target);
    fflush(stdout);
    fprintf(stderr, "progress: writing %zu bytes\n", strlen(text));

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(tmp);
        return 1;
    }
    int rc = buggy ? write_once(fd, text, strlen(text)) : write_all(fd, text, strlen(text));
    if (rc < 0 || fsync(fd) < 0) {
        perror(tmp);
        close(fd);
        unlink(tmp);
        return 1;
    }
    if (close(fd) < 0 || rename(tmp, target) < 0) {
        perror(tmp);
        unlink(tmp);
        return 1;
    }
    if (fsync_dir_of(target) < 0) {
        perror(target);
        return 1;
    }
    printf("saved\n");
    return 0;
}
