/* Save TEXT to TARGET through a temp file, checking what fsync(2) and close(2) return.
 *
 * usage: check_errors correct|buggy TARGET TEXT
 *
 * correct: every result is checked: a failed fsync or close removes the temp file and exits 1.
 * buggy:   fsync's and close's results are ignored. A failed fsync means the data may not be
 *          on disk, and since Linux 4.13 the kernel marks the dirty pages clean after
 *          reporting the error once ("fsyncgate"): the save renames a file whose data can be
 *          gone after a power loss, and exits 0. close(2) also reports earlier write errors
 *          (NFS, quotas).
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

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(tmp);
        return 1;
    }
    if (write_all(fd, text, strlen(text)) < 0) {
        perror(tmp);
        close(fd);
        unlink(tmp);
        return 1;
    }
    if (buggy) {
        fsync(fd); /* the bug: results ignored */
        close(fd);
    } else {
        if (fsync(fd) < 0) {
            perror(tmp);
            close(fd);
            unlink(tmp);
            return 1;
        }
        if (close(fd) < 0) {
            perror(tmp);
            unlink(tmp);
            return 1;
        }
    }
    fprintf(stderr, "progress: renaming %s\n", tmp);
    if (rename(tmp, target) < 0) {
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
