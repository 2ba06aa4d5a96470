/* Save TEXT to TARGET (temp file, fsync, rename, directory fsync) in a child process.
 *
 * usage: background correct|buggy TARGET TEXT
 *
 * correct: fork a child to save, wait for it, and exit with its status.
 * buggy:   fork a child to save and exit 0 at once. The command has "succeeded" while the
 *          state on disk is still the old one: the child only starts once the parent is gone
 *          (it waits for the end of a pipe only the parent holds), as a slow save would.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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

static int save(const char *target, const char *text) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", target);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(tmp);
        return 1;
    }
    if (write_all(fd, text, strlen(text)) < 0 || fsync(fd) < 0) {
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
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "correct") != 0 && strcmp(argv[1], "buggy") != 0)) {
        fprintf(stderr, "usage: %s correct|buggy TARGET TEXT\n", argv[0]);
        return 2;
    }
    int buggy = strcmp(argv[1], "buggy") == 0;
    printf("saving %s in a child\n", argv[2]);
    fflush(stdout);
    int gone[2];
    if (pipe(gone) < 0) {
        perror("pipe");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        close(gone[1]);
        if (buggy) {
            char c;
            while (read(gone[0], &c, 1) > 0) /* until the parent has exited */
                ;
        }
        close(gone[0]);
        _exit(save(argv[2], argv[3]));
    }
    close(gone[0]);
    if (buggy) {
        fprintf(stderr, "progress: the save goes on in the background\n");
        return 0; /* the bug: the command returns before the save has happened */
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            perror("waitpid");
            return 1;
        }
    close(gone[1]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the save failed\n");
        return 1;
    }
    printf("saved\n");
    return 0;
}
