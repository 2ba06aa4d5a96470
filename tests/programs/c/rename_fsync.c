/* Save TEXT to TARGET through a temp file and rename(2).
 *
 * usage: rename_fsync correct|buggy TARGET TEXT
 *
 * correct: write every byte of TARGET.tmp, fsync it, close it, rename it over TARGET, fsync the
 *          directory; on any error remove the temp file and exit 1.
 * buggy:   the same without the fsync of the temp file. rename(2) is atomic to other processes,
 *          but after a power loss the rename can be on disk while the data is not: TARGET is
 *          then empty or zero-filled.
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
    fprintf(stderr, "progress: writing %s\n", tmp);

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(tmp);
        return 1;
    }
    if (write_all(fd, text, strlen(text)) < 0 || (!buggy && fsync(fd) < 0)) {
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
