/* Disk links by id: see disks.h. */
#define _GNU_SOURCE
#include "disks.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BY_ID "/dev/disk/by-id"

/* The serial attribute of /sys/block/NAME, without its newline; false when it has none. */
static bool read_serial(const char *name, char *serial, size_t size)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "/sys/block/%s/serial", name) >= sizeof path)
        return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, serial, size - 1);
    close(fd);
    if (n <= 0)
        return false;
    serial[n] = '\0';
    serial[strcspn(serial, "\n")] = '\0';
    return serial[0] != '\0';
}

/* udev keeps these characters of a serial as they are (vmrun's ids use no others). */
static bool plain(const char *s)
{
    for (; *s; s++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-", *s))
            return false;
    return true;
}

static int make_link(const char *target, const char *serial, const char *suffix,
                     void (*say)(const char *fmt, ...))
{
    char link[PATH_MAX], to[PATH_MAX];
    if ((size_t)snprintf(link, sizeof link, BY_ID "/virtio-%s%s", serial, suffix) >= sizeof link ||
        (size_t)snprintf(to, sizeof to, "../../%s", target) >= sizeof to)
        return 0;
    if (symlink(to, link) < 0 && errno != EEXIST) {
        say("link %s: %s", link, strerror(errno));
        return 0;
    }
    return 1;
}

int link_disks_by_id(void (*say)(const char *fmt, ...))
{
    DIR *block = opendir("/sys/block");
    if (!block)
        return 0;
    int made = 0;
    bool dirs = false;
    for (struct dirent *e; (e = readdir(block));) {
        char serial[64];
        if (strncmp(e->d_name, "vd", 2) != 0 || !read_serial(e->d_name, serial, sizeof serial) ||
            !plain(serial))
            continue;
        if (!dirs) {
            if ((mkdir("/dev/disk", 0755) < 0 && errno != EEXIST) ||
                (mkdir(BY_ID, 0755) < 0 && errno != EEXIST)) {
                say("mkdir " BY_ID ": %s", strerror(errno));
                break;
            }
            dirs = true;
        }
        made += make_link(e->d_name, serial, "", say);
        /* Partitions are subdirectories named after the disk: vda1, vda2, ... */
        char path[PATH_MAX];
        snprintf(path, sizeof path, "/sys/block/%s", e->d_name);
        DIR *disk = opendir(path);
        size_t len = strlen(e->d_name);
        for (struct dirent *p; disk && (p = readdir(disk));) {
            const char *number = p->d_name + len;
            if (strncmp(p->d_name, e->d_name, len) != 0 || !*number ||
                strspn(number, "0123456789") != strlen(number))
                continue;
            char suffix[32];
            snprintf(suffix, sizeof suffix, "-part%s", number);
            made += make_link(p->d_name, serial, suffix, say);
        }
        if (disk)
            closedir(disk);
    }
    closedir(block);
    return made;
}
