/* Append one record to LOG, a file with a header page that counts its records.
 *
 * usage: header_record correct|buggy LOG TEXT
 *
 * Layout: bytes 0..7 are the header, "LOG1" and the record count (4 bytes, little-endian);
 * record i is 64 bytes at offset 4096 + 64*i, "REC:" then TEXT padded with spaces. The header
 * and the records are on different pages, and the disk may write pages in any order.
 *
 * correct: write the record, fsync, then write the new count, fsync: the header never counts a
 *          record that is not on disk.
 * buggy:   write the record, then the header, and one fsync at the end. After a power loss
 *          before that fsync, the header page can be on disk while the record page is not: the
 *          header counts a record that reads as zeros.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RECORDS_AT 4096
#define RECORD 64

static int pwrite_all(int fd, const char *p, size_t n, off_t at) {
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, at);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        at += w;
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

static int fail(const char *what, int fd) {
    perror(what);
    if (fd >= 0)
        close(fd);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "correct") != 0 && strcmp(argv[1], "buggy") != 0)) {
        fprintf(stderr, "usage: %s correct|buggy LOG TEXT\n", argv[0]);
        return 2;
    }
    int buggy = strcmp(argv[1], "buggy") == 0;
    const char *log = argv[2], *text = argv[3];
    if (strlen(text) > RECORD - 4) {
        fprintf(stderr, "TEXT is longer than %d bytes\n", RECORD - 4);
        return 2;
    }
    int created = access(log, F_OK) != 0;
    int fd = open(log, O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        return fail(log, -1);
    unsigned char header[8] = {'L', 'O', 'G', '1', 0, 0, 0, 0};
    ssize_t got = pread(fd, header, sizeof header, 0);
    if (got < 0)
        return fail(log, fd);
    if (got != 0 && (got != (ssize_t)sizeof header || memcmp(header, "LOG1", 4) != 0)) {
        fprintf(stderr, "%s: not a log file\n", log);
        close(fd);
        return 1;
    }
    uint32_t count = (uint32_t)header[4] | (uint32_t)header[5] << 8 | (uint32_t)header[6] << 16 |
                     (uint32_t)header[7] << 24;
    printf("appending record %u to %s\n", count, log);
    fflush(stdout);

    char record[RECORD];
    memset(record, ' ', sizeof record);
    memcpy(record, "REC:", 4);
    memcpy(record + 4, text, strlen(text));
    if (pwrite_all(fd, record, sizeof record, RECORDS_AT + (off_t)RECORD * count) < 0)
        return fail(log, fd);
    if (!buggy && fsync(fd) < 0) /* the record is on disk before the header counts it */
        return fail(log, fd);
    count++;
    header[4] = count & 0xff;
    header[5] = count >> 8 & 0xff;
    header[6] = count >> 16 & 0xff;
    header[7] = count >> 24 & 0xff;
    memcpy(header, "LOG1", 4);
    fprintf(stderr, "progress: header now counts %u\n", count);
    if (pwrite_all(fd, (const char *)header, sizeof header, 0) < 0 || fsync(fd) < 0)
        return fail(log, fd);
    if (close(fd) < 0)
        return fail(log, -1);
    if (created && fsync_dir_of(log) < 0)
        return fail(log, -1);
    printf("appended\n");
    return 0;
}
