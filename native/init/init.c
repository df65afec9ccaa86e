/* vmrun's guest init: PID 1 of the guest's initramfs.
 *
 * It mounts the basic file systems, brings up the loopback interface, reads /vmrun/config
 * (format: config.h, README.md), loads the kernel modules named there, takes the configured
 * console (by default /dev/console), mounts the root (the initramfs itself, a virtio-fs share
 * or a block device) and switches into it, sets the host name, opens the virtio ports that the
 * config makes the workload's stdio, runs the workload as a child with its env, workdir and
 * rlimits, reaps every zombie while it waits, and reports the workload's exit status to the VMM
 * through EXIT_PORT before powering off (ports: ports.h).
 *
 * Exit status, as libkrun: the workload's own (0..255); 128+N when a signal N killed it;
 * 127 when its program is not found (execve: ENOENT, ENOTDIR); 126 when it cannot be run
 * (any other execve error); 125 when the init fails before the workload runs (unreadable or
 * malformed config, console or stdio port missing, root mount or switch failure, fork failure,
 * rlimit or workdir failure).
 *
 * Test mode (VMRUN_INIT_TEST=1 in the environment): `init CONFIG` skips everything that needs
 * a guest (mounts, module loading, console, root, host name, I/O ports, power-off), reads CONFIG,
 * says on stderr which modules it would load with which parameters (from
 * $VMRUN_INIT_TEST_CMDLINE instead of /proc/cmdline), opens the stdio ports as in the guest but
 * from $VMRUN_INIT_TEST_PORTS and $VMRUN_INIT_TEST_DEV, runs the workload the same way (env,
 * workdir and rlimits applied), prints `exit-status N` on stdout and exits 0.
 * Without test mode the init refuses to run unless it is PID 1, so that running it on a host by
 * mistake never mounts anything nor powers the host off.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <sys/io.h>
#define HAVE_PORTS 1
#else
#define HAVE_PORTS 0
#endif

#include "config.h"
#include "disks.h"
#include "modparams.h"
#include "ports.h"

#define CONFIG_PATH "/vmrun/config"
#define NEWROOT "/newroot"
#define TEST_ENV "VMRUN_INIT_TEST"
#define TEST_CMDLINE_ENV "VMRUN_INIT_TEST_CMDLINE" /* test mode: the command line */
#define TEST_PORTS_ENV "VMRUN_INIT_TEST_PORTS"     /* test mode: instead of VPORTS_DIR */
#define TEST_DEV_ENV "VMRUN_INIT_TEST_DEV"         /* test mode: the ports' nodes, not /dev */
#define TEST_PORT_WAIT_ENV "VMRUN_INIT_TEST_PORT_WAIT_MS" /* test mode: not VPORT_WAIT_MS */
#define VPORTS_DIR "/sys/class/virtio-ports"
#define ROOT_WAIT_MS 2000      /* how long a root device may take to appear */
#define CONSOLE_WAIT_MS 5000   /* how long the `console` may take to appear */
#define VPORT_WAIT_MS 5000     /* how long the stdio ports may take to appear, all together */
#define LEFTOVER_WAIT_MS 1000  /* how long killed leftover processes may take to die */

#define EXIT_INIT_FAILED 125
#define EXIT_NOT_EXECUTABLE 126
#define EXIT_NOT_FOUND 127

#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4 /* linux/module.h, Linux 6.4+: the kernel decompresses */
#endif

static bool test_mode;
static bool ports_ok;
/* Where say() writes: stderr, except in a workload's child whose stderr became a port (the
 * init's messages stay on its console). */
static int say_fd = STDERR_FILENO;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A message on stderr (the console in the guest), prefixed so it is told from the workload's. */
static void say(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "vmrun-init: ");
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(buf);
    buf[len++] = '\n';
    ssize_t written;
    while ((written = write(say_fd, buf, len)) < 0 && errno == EINTR)
        ;
    if (written < 0 && !test_mode) {
        /* No console yet (a virtio console appears only after its module and the host's
         * answer): the kernel's log keeps it, at emergency level so that the console prints
         * it once it registers (its driver replays the log) whatever the loglevel. */
        int kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
        if (kmsg >= 0) {
            char line[sizeof buf + 3] = "<0>";
            memcpy(line + 3, buf, len);
            (void)!write(kmsg, line, len + 3);
            close(kmsg);
        }
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* --- ports ------------------------------------------------------------------------------- */

static void ports_open(void)
{
#if HAVE_PORTS
    ports_ok = ioperm(DEBUG_PORT, 1, 1) == 0 && ioperm(EXIT_PORT, EXIT_PORT_WIDTH, 1) == 0;
    if (!ports_ok)
        say("ioperm: %s (the exit status cannot reach the VMM)", strerror(errno));
#endif
}

/* In the workload's process, before execve: only the init talks to the VMM. */
static void ports_close(void)
{
#if HAVE_PORTS
    if (ports_ok) {
        ioperm(DEBUG_PORT, 1, 0);
        ioperm(EXIT_PORT, EXIT_PORT_WIDTH, 0);
    }
#endif
}

static void milestone(enum milestone m)
{
#if HAVE_PORTS
    if (ports_ok)
        outb((unsigned char)m, DEBUG_PORT);
#else
    (void)m;
#endif
}

static void report_exit(int status)
{
    if (test_mode) {
        dprintf(STDOUT_FILENO, "exit-status %d\n", status);
        return;
    }
#if HAVE_PORTS
    if (ports_ok) {
        outl(EXIT_MAGIC | ((unsigned)status & 0xffu), EXIT_PORT);
        return;
    }
#endif
    say("exit status %d (no exit port to report it on)", status);
}

/* --- the basics ---------------------------------------------------------------------------- */

static const struct basic_mount {
    const char *source, *target, *type;
    unsigned long flags;
    const char *data;
} basic_mounts[] = {
    {"proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL},
    {"sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL},
    {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"},
    {"tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"},
    {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
    {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666"},
    {"tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
};

#define N_BASIC_MOUNTS (sizeof basic_mounts / sizeof basic_mounts[0])
static bool basic_mounted[N_BASIC_MOUNTS]; /* what switch_root carries into the root */

static void make_dir(const char *path)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        say("mkdir %s: %s", path, strerror(errno));
}

/* A failed basic mount is reported, not fatal: the workload may not need it, and a root that
 * does (a block device needs /dev) fails on its own, with its own message. */
static void mount_basics(void)
{
    for (size_t i = 0; i < N_BASIC_MOUNTS; i++) {
        const struct basic_mount *m = &basic_mounts[i];
        make_dir(m->target);
        basic_mounted[i] = mount(m->source, m->target, m->type, m->flags, m->data) == 0;
        if (!basic_mounted[i])
            say("mount %s on %s: %s", m->type, m->target, strerror(errno));
    }
}

/* The init leads the console's session, so that the console outlives the workload (see
 * exec_workload). It ignores SIGTTOU: it hands the foreground to the workload and takes it
 * back, and drains the console while its own group is in the background. */
static void lead_console_session(void)
{
    signal(SIGTTOU, SIG_IGN);
    if (setsid() < 0 || ioctl(STDIN_FILENO, TIOCSCTTY, 0) < 0) {
        if (errno != ENOTTY) /* no terminal: no console output to lose */
            say("the console as controlling terminal: %s", strerror(errno));
        return;
    }
    /* The workload's output reaches vmrun's stdout as written, "\n" not made "\r\n": a
     * terminal on the host adds its own "\r", a file or a pipe wants none. */
    struct termios mode;
    if (tcgetattr(STDOUT_FILENO, &mode) == 0) {
        mode.c_oflag &= ~(tcflag_t)ONLCR;
        tcsetattr(STDOUT_FILENO, TCSANOW, &mode);
    }
}

/* The kernel opens /dev/console for the init only when the initramfs has that node; else
 * fds 0..2 are closed until devtmpfs is mounted. Open the console for those that are. */
static void ensure_console(void)
{
    bool closed[3];
    bool any = false;
    for (int fd = 0; fd < 3; fd++)
        any |= closed[fd] = fcntl(fd, F_GETFD) < 0;
    if (!any)
        return;
    int console = open("/dev/console", O_RDWR | O_NOCTTY);
    if (console < 0)
        return; /* nothing to say it on */
    for (int fd = 0; fd < 3; fd++)
        if (closed[fd] && fd != console)
            dup2(console, fd);
    if (console > 2)
        close(console);
}

/* The config's `console`: a virtio console's terminal appears only once its driver has heard
 * from the host's device, after the module load. Waits for it (ENODEV: an hvc node made before
 * its port is; EINVAL: virtio_console allocates the hvc before it lists the port, and an open
 * in between fails in its notifier_add), makes it fds 0..2 and leads its session. */
static int take_console(const char *path)
{
    int fd;
    for (int waited = 0;; waited += 10) {
        fd = open(path, O_RDWR | O_NOCTTY); /* not O_CLOEXEC: it may land on 0..2 itself */
        if (fd >= 0)
            break;
        int err = errno;
        if ((err != ENOENT && err != ENXIO && err != ENODEV && err != EINVAL) ||
            waited >= CONSOLE_WAIT_MS) {
            say("console %s: %s (waited %d ms)", path, strerror(err), waited);
            return -1;
        }
        sleep_ms(10);
    }
    for (int std = 0; std < 3; std++)
        if (std != fd)
            dup2(fd, std);
    if (fd > 2)
        close(fd);
    lead_console_session();
    return 0;
}

/* Drains the console before the exit report (see main); a port or a file has nothing to
 * drain, and its ENOTTY is no news. */
static void drain_console(void)
{
    for (int fd = STDOUT_FILENO; fd <= STDERR_FILENO; fd++)
        if (isatty(fd))
            tcdrain(fd);
}

/* Brings the loopback interface up (the kernel then gives it 127.0.0.1/8 and ::1). */
static void loopback_up(void)
{
    struct ifreq ifr = {0};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    strcpy(ifr.ifr_name, "lo");
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0 ||
        (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr) < 0))
        say("loopback: %s", strerror(errno));
    if (fd >= 0)
        close(fd);
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The kernel's command line (in test mode: $VMRUN_INIT_TEST_CMDLINE), for module parameters. */
static void read_cmdline(char *buf, size_t size)
{
    buf[0] = '\0';
    if (test_mode) {
        const char *given = getenv(TEST_CMDLINE_ENV);
        snprintf(buf, size, "%s", given ? given : "");
        return;
    }
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, size - 1);
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
}

/* Each module in order, with its parameters from the command line; a failure is reported and
 * the next is tried (a later mount or the workload says what was missing). EEXIST: built in
 * or already loaded, which is fine. Test mode only says what it would load. */
static void load_modules(const struct config *cfg)
{
    char cmdline[4096], name[256], params[4096];
    if (cfg->n_modules)
        read_cmdline(cmdline, sizeof cmdline);
    for (size_t i = 0; i < cfg->n_modules; i++) {
        const char *path = cfg->modules[i];
        if (module_name(path, name, sizeof name) < 0 ||
            module_params(cmdline, name, params, sizeof params) < 0) {
            say("module %s: its name or command-line parameters are too long", path);
            params[0] = '\0';
        }
        if (test_mode) {
            say("module %s: not loaded in test mode (parameters '%s')", path, params);
            continue;
        }
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            say("module %s: %s", path, strerror(errno));
            continue;
        }
        bool packed = has_suffix(path, ".xz") || has_suffix(path, ".zst") ||
                      has_suffix(path, ".gz");
        int flags = packed ? MODULE_INIT_COMPRESSED_FILE : 0;
        if (syscall(SYS_finit_module, fd, params, flags) < 0 && errno != EEXIST)
            say("module %s: finit_module: %s%s", path, strerror(errno),
                errno == ENOENT ? " (a symbol it needs is missing: are the modules it depends "
                                  "on listed before it?)" : "");
        close(fd);
    }
}

/* --- the root ------------------------------------------------------------------------------ */

static const struct mount_flag {
    const char *name;
    unsigned long set, clear;
} mount_flags[] = {
    {"defaults", 0, 0},         {"ro", MS_RDONLY, 0},       {"rw", 0, MS_RDONLY},
    {"nosuid", MS_NOSUID, 0},   {"suid", 0, MS_NOSUID},     {"nodev", MS_NODEV, 0},
    {"dev", 0, MS_NODEV},       {"noexec", MS_NOEXEC, 0},   {"exec", 0, MS_NOEXEC},
    {"sync", MS_SYNCHRONOUS, 0}, {"async", 0, MS_SYNCHRONOUS}, {"dirsync", MS_DIRSYNC, 0},
    {"noatime", MS_NOATIME, 0}, {"atime", 0, MS_NOATIME},   {"nodiratime", MS_NODIRATIME, 0},
    {"diratime", 0, MS_NODIRATIME}, {"relatime", MS_RELATIME, 0},
    {"norelatime", 0, MS_RELATIME}, {"strictatime", MS_STRICTATIME, 0},
    {"lazytime", MS_LAZYTIME, 0},   {"nolazytime", 0, MS_LAZYTIME},
};

/* Splits mount(8)-style options into mount(2) flags and the file system's own options. */
static int split_options(const char *options, unsigned long *flags, char *data, size_t size)
{
    char copy[4096];
    if (strlen(options) >= sizeof copy || size < sizeof copy)
        return -1;
    strcpy(copy, options);
    *flags = 0;
    data[0] = '\0';
    char *save = NULL;
    for (char *opt = strtok_r(copy, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
        bool known = false;
        for (size_t i = 0; i < sizeof mount_flags / sizeof mount_flags[0]; i++)
            if (strcmp(opt, mount_flags[i].name) == 0) {
                *flags = (*flags & ~mount_flags[i].clear) | mount_flags[i].set;
                known = true;
            }
        if (!known) {
            if (data[0])
                strcat(data, ",");
            strcat(data, opt);
        }
    }
    return 0;
}

/* Mounts the configured root on NEWROOT. A device node that is not there yet (ENOENT, ENXIO:
 * its driver may still be probing) is waited for, up to ROOT_WAIT_MS; any other error, such as
 * an unknown file system type (ENODEV) or virtio-fs tag (EINVAL), fails at once. */
static int mount_root(const struct config *cfg)
{
    const char *source = cfg->root == ROOT_FS ? cfg->root_tag : cfg->root_device;
    const char *type = cfg->root == ROOT_FS ? "virtiofs" : cfg->root_fstype;
    unsigned long flags;
    char data[4096];
    if (split_options(cfg->root_options, &flags, data, sizeof data) < 0) {
        say("root-options too long");
        return -1;
    }
    make_dir(NEWROOT);
    for (int waited = 0;; waited += 10) {
        if (mount(source, NEWROOT, type, flags, data[0] ? data : NULL) == 0)
            return 0;
        int err = errno;
        if ((err != ENOENT && err != ENXIO) || waited >= ROOT_WAIT_MS) {
            say("mount %s %s on " NEWROOT " (options '%s'): %s", type, source,
                cfg->root_options, strerror(err));
            return -1;
        }
        sleep_ms(10);
    }
}

/* Whether `path` is `dir` or below it. */
static bool is_under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* mkdir -p for the few levels of a basic mount point under NEWROOT. */
static int make_dirs(char *path)
{
    for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        int rc = mkdir(path, 0755);
        *slash = '/';
        if (rc < 0 && errno != EEXIST)
            return -1;
    }
    return mkdir(path, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

/* Moves each basic mount that was made to the same place under NEWROOT; one under a moved
 * mount goes with it (/dev/pts with /dev), one whose parent was not mounted goes alone. */
static void move_basic_mounts(void)
{
    bool moved[N_BASIC_MOUNTS] = {false};
    char target[PATH_MAX];
    for (size_t i = 0; i < N_BASIC_MOUNTS; i++) {
        const char *path = basic_mounts[i].target;
        bool carried = false;
        for (size_t j = 0; j < i; j++)
            carried |= moved[j] && is_under(path, basic_mounts[j].target);
        if (!basic_mounted[i] || carried)
            continue;
        snprintf(target, sizeof target, NEWROOT "%s", path);
        if (make_dirs(target) < 0 || mount(path, target, NULL, MS_MOVE, NULL) < 0) {
            say("move %s to %s: %s; the root has no %s", path, target, strerror(errno), path);
            umount2(path, MNT_DETACH);
            continue;
        }
        moved[i] = true;
    }
}

/* switch_root: the basic mounts move under NEWROOT, then NEWROOT becomes `/`. The initramfs's
 * files are left in memory (not deleted as busybox switch_root does): they are small. */
static int switch_root(void)
{
    move_basic_mounts();
    if (chdir(NEWROOT) < 0 || mount(NEWROOT, "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
        chdir("/") < 0) {
        say("switch to the root at " NEWROOT ": %s", strerror(errno));
        return -1;
    }
    return 0;
}

static bool root_switched; /* a disk or share is `/`: made read-only before power-off */

static int setup_root(const struct config *cfg)
{
    if (cfg->root == ROOT_INITRAMFS)
        return 0;
    if (mount_root(cfg) < 0 || switch_root() < 0)
        return -1;
    root_switched = true;
    return 0;
}

/* After the sync: a root file system on a disk is left clean (ext4 needs no journal
 * replay at the next boot, as after a shutdown), and nothing can write to it any more. */
static void quiesce_root(void)
{
    if (root_switched && mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
        say("remount / read-only: %s", strerror(errno));
}

/* --- stdio ports ----------------------------------------------------------------------------- */

/* Whether virtio port ENTRY of `dir` is named `name`. Its name attribute appears only when
 * the host's PORT_NAME message has arrived: absent means not yet. */
static bool vport_named(const char *dir, const char *entry, const char *name)
{
    char path[PATH_MAX], buf[4098]; /* a sysfs attribute is at most a page */
    if ((size_t)snprintf(path, sizeof path, "%s/%s/name", dir, entry) >= sizeof path)
        return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    if (buf[n - 1] == '\n') /* the kernel's line end, not the name's */
        n--;
    buf[n] = '\0';
    return strcmp(buf, name) == 0;
}

/* The entry (vportNpM) of the port named `name` in `dir`: the lowest N, then M, when several
 * are (the first device's, deterministic whatever order readdir gives). -1: none yet. */
static int find_vport(const char *dir, const char *name, char *entry, size_t size)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    unsigned best_n = 0, best_m = 0;
    bool found = false;
    for (struct dirent *e; (e = readdir(d));) {
        unsigned n, m;
        int end = 0;
        if (sscanf(e->d_name, "vport%up%u%n", &n, &m, &end) != 2 || e->d_name[end] != '\0' ||
            strlen(e->d_name) >= size || !vport_named(dir, e->d_name, name))
            continue;
        if (found && (n > best_n || (n == best_n && m > best_m)))
            continue;
        found = true;
        best_n = n;
        best_m = m;
        strcpy(entry, e->d_name);
    }
    closedir(d);
    return found ? 0 : -1;
}

/* A copy of `fd` at 3 or above (closing `fd`), so that the child's dup2 onto 0..2 never
 * overwrites another port's fd nor leaves one with its close-on-exec flag. */
static int above_stdio(int fd)
{
    if (fd > STDERR_FILENO)
        return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    close(fd);
    return moved;
}

static long test_port_wait_ms(void)
{
    const char *given = getenv(TEST_PORT_WAIT_ENV);
    char *end;
    long ms = given ? strtol(given, &end, 10) : -1;
    return given && *given && !*end && ms >= 0 ? ms : VPORT_WAIT_MS;
}

/* Where the ports are listed and their nodes made (test mode: the test's directories), and how
 * long they may take to appear. */
static long vport_places(const char **dir, const char **dev)
{
    *dir = VPORTS_DIR;
    *dev = "/dev";
    if (!test_mode)
        return VPORT_WAIT_MS;
    *dir = getenv(TEST_PORTS_ENV) ? getenv(TEST_PORTS_ENV) : *dir;
    *dev = getenv(TEST_DEV_ENV) ? getenv(TEST_DEV_ENV) : *dev;
    return test_port_wait_ms();
}

static void close_vports(int vports[3])
{
    for (int fd = 0; fd < 3; fd++)
        if (vports[fd] >= 0) {
            close(vports[fd]);
            vports[fd] = -1;
        }
}

/* Opens the port of each `stdio-port` (close-on-exec, at fd 3 or above: the child dup2s
 * them), waiting up to VPORT_WAIT_MS in all for them to appear. */
static int open_vports(const struct config *cfg, int vports[3])
{
    const char *dir, *dev;
    long wait_ms = vport_places(&dir, &dev);
    vports[0] = vports[1] = vports[2] = -1;
    for (long waited = 0;; waited += 10) {
        bool missing = false;
        for (int fd = 0; fd < 3; fd++) {
            const char *name = cfg->stdio_ports[fd];
            char entry[NAME_MAX + 1], path[PATH_MAX];
            if (!name || vports[fd] >= 0)
                continue;
            if (find_vport(dir, name, entry, sizeof entry) < 0) {
                missing = true;
                continue;
            }
            snprintf(path, sizeof path, "%s/%s", dev, entry);
            int port = open(path, (fd ? O_WRONLY : O_RDONLY) | O_CLOEXEC | O_NOCTTY);
            if (port < 0 && errno == ENOENT) { /* devtmpfs has not made the node yet */
                missing = true;
                continue;
            }
            if (port < 0 || (port = above_stdio(port)) < 0) {
                say("stdio-port %d %s: %s: %s", fd, name, path, strerror(errno));
                close_vports(vports);
                return -1;
            }
            vports[fd] = port;
        }
        if (!missing)
            return 0;
        if (waited >= wait_ms) {
            for (int fd = 0; fd < 3; fd++)
                if (cfg->stdio_ports[fd] && vports[fd] < 0)
                    say("stdio-port %d: no virtio port named '%s' in %s after %ld ms", fd,
                        cfg->stdio_ports[fd], dir, waited);
            close_vports(vports);
            return -1;
        }
        sleep_ms(10);
    }
}

/* In the child: each port onto its fd. The init's messages stay on the console: say() gets
 * a copy of the console's stderr before a port replaces it. */
static void use_vports(const int vports[3])
{
    if (vports[STDERR_FILENO] >= 0) {
        int console = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
        if (console >= 0)
            say_fd = console;
    }
    for (int fd = 0; fd < 3; fd++)
        if (vports[fd] >= 0 && dup2(vports[fd], fd) < 0) {
            say("stdio-port %d: dup2: %s", fd, strerror(errno));
            _exit(EXIT_INIT_FAILED);
        }
}

/* --- the workload --------------------------------------------------------------------------- */

static const char *env_value(const struct config *cfg, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < cfg->n_env; i++)
        if (strncmp(cfg->env[i], name, n) == 0 && cfg->env[i][n] == '=')
            return cfg->env[i] + n + 1;
    return NULL;
}

/* execve of `name` along the workload's PATH, as execvp does (an empty entry is the workdir):
 * not-found errors go on to the next entry, EACCES is remembered, any other error stops.
 * Returns only on failure, with errno set. */
static void exec_along_path(const struct config *cfg, char *const env[])
{
    const char *name = cfg->argv[0];
    const char *path = env_value(cfg, "PATH"); /* config_parse adds a default PATH */
    if (!path)
        path = DEFAULT_PATH + strlen("PATH=");
    bool denied = false;
    char file[PATH_MAX];
    for (const char *dir = path;; dir++) {
        const char *end = strchrnul(dir, ':');
        size_t len = (size_t)(end - dir);
        int n = len ? snprintf(file, sizeof file, "%.*s/%s", (int)len, dir, name)
                    : snprintf(file, sizeof file, "%s", name);
        if (n >= 0 && (size_t)n < sizeof file) {
            execve(file, (char *const *)cfg->argv, env);
            if (errno == EACCES)
                denied = true;
            else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
                     errno != ETIMEDOUT)
                return;
        }
        if (!*end)
            break;
        dir = end;
    }
    errno = denied ? EACCES : ENOENT;
}

/* The child: stdio ports, rlimits, workdir, then the program. Never returns. */
static void exec_workload(const struct config *cfg, const int vports[3])
{
    ports_close();
    if (!test_mode) {
        /* Its own process group, the console's foreground one: ^C and job control reach it.
         * Not its own session: a session leader's exit hangs the console up, which throws
         * away the output the UART has not sent yet (tty_ldisc_hangup flushes the driver). */
        setpgid(0, 0);
        tcsetpgrp(STDIN_FILENO, getpid());
        signal(SIGTTOU, SIG_DFL); /* ignored dispositions survive execve */
    }
    use_vports(vports); /* after tcsetpgrp: the foreground is the console's, not a port's */
    for (size_t i = 0; i < cfg->n_rlimits; i++)
        if (setrlimit(cfg->rlimits[i].resource, &cfg->rlimits[i].limit) < 0) {
            say("rlimit %s: %s", cfg->rlimits[i].name, strerror(errno));
            _exit(EXIT_INIT_FAILED);
        }
    if (chdir(cfg->workdir) < 0) {
        say("workdir %s: %s", cfg->workdir, strerror(errno));
        _exit(EXIT_INIT_FAILED);
    }
    char *const *env = (char *const *)cfg->env;
    const char *program = cfg->argv[0];
    if (strchr(program, '/'))
        execve(program, (char *const *)cfg->argv, env);
    else
        exec_along_path(cfg, env);
    int err = errno;
    bool not_found = err == ENOENT || err == ENOTDIR;
    if (err == ENOENT && strchr(program, '/') && access(program, F_OK) == 0)
        say("cannot run %s: its interpreter (#! line or ELF PT_INTERP) is missing", program);
    else
        say("cannot run %s: %s", program, strerror(err));
    _exit(not_found ? EXIT_NOT_FOUND : EXIT_NOT_EXECUTABLE);
}

static int decode_status(int wstatus)
{
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus); /* signals are 1..64: at most 192 */
    return EXIT_INIT_FAILED;
}

/* Waits for `child`, reaping every other process that ends meanwhile (orphans come to PID 1,
 * and in test mode to the init as a subreaper). */
static int wait_workload(pid_t child)
{
    for (;;) {
        int wstatus;
        pid_t pid = waitpid(-1, &wstatus, 0);
        if (pid == child)
            return decode_status(wstatus);
        if (pid < 0 && errno != EINTR) {
            say("waitpid: %s", strerror(errno));
            return EXIT_INIT_FAILED;
        }
    }
}

/* Every port of the VM's virtio consoles, each named one with its name, with its /dev node:
 * the driver adds ports one by one as the host's messages come, so a workload started at once
 * could find /dev/vport2p1 not there yet (ENXIO). Not fatal past the wait: said, and the
 * workload starts. */
static void wait_vports(const struct config *cfg)
{
    const char *dir, *dev;
    long wait_ms = vport_places(&dir, &dev);
    unsigned total = 0, named = 0;
    for (long waited = 0; cfg->vports_total; waited += 10) {
        total = named = 0;
        DIR *d = opendir(dir);
        for (struct dirent *e; d && (e = readdir(d));) {
            char path[PATH_MAX], name[2];
            unsigned n, m;
            if (sscanf(e->d_name, "vport%up%u", &n, &m) != 2)
                continue;
            if ((size_t)snprintf(path, sizeof path, "%s/%s", dev, e->d_name) >= sizeof path ||
                access(path, F_OK) < 0)
                continue;
            total++;
            snprintf(path, sizeof path, "%s/%s/name", dir, e->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                if (read(fd, name, 1) == 1 && name[0] != '\n')
                    named++;
                close(fd);
            }
        }
        if (d)
            closedir(d);
        if (total >= cfg->vports_total && named >= cfg->vports_named)
            return;
        if (waited >= wait_ms)
            break;
        sleep_ms(10);
    }
    if (cfg->vports_total)
        say("virtio-ports: %u of %u ports, %u of %u named, after %ld ms", total,
            cfg->vports_total, named, cfg->vports_named, wait_ms);
}

static int run_workload(const struct config *cfg)
{
    int vports[3];
    wait_vports(cfg);
    if (open_vports(cfg, vports) < 0)
        return EXIT_INIT_FAILED;
    pid_t child = fork();
    if (child < 0) {
        say("fork: %s", strerror(errno));
        close_vports(vports);
        return EXIT_INIT_FAILED;
    }
    if (child == 0)
        exec_workload(cfg, vports);
    close_vports(vports); /* the workload's now: its end of file is its close, not ours */
    if (!test_mode)
        setpgid(child, child); /* as the child does: whichever runs first */
    milestone(MILESTONE_WORKLOAD_STARTED);
    int status = wait_workload(child);
    if (!test_mode)
        tcsetpgrp(STDIN_FILENO, getpgrp()); /* the console back, to drain it */
    milestone(MILESTONE_WORKLOAD_EXITED);
    return status;
}

/* --- the whole ------------------------------------------------------------------------------ */

static int boot_and_run(const char *config_path)
{
    struct config cfg;
    char err[512];
    if (!test_mode) {
        mount_basics();
        ensure_console();
        loopback_up();
    }
    milestone(MILESTONE_MOUNTS_DONE);
    int loaded = config_load(config_path, &cfg, err, sizeof err);
    /* The kernel's console leads unless the config names another (a session leader cannot
     * trade its controlling terminal for another without hanging the first one up). */
    if (!test_mode && (loaded < 0 || !cfg.console))
        lead_console_session();
    if (loaded < 0) {
        say("%s: %s", config_path, err);
        return EXIT_INIT_FAILED;
    }
    load_modules(&cfg);
    if (!test_mode)
        link_disks_by_id(say);
    milestone(MILESTONE_MODULES_LOADED);
    if (!test_mode && cfg.console && take_console(cfg.console) < 0)
        return EXIT_INIT_FAILED;
    if (!test_mode && setup_root(&cfg) < 0)
        return EXIT_INIT_FAILED;
    milestone(MILESTONE_ROOT_MOUNTED);
    if (!test_mode && sethostname(cfg.hostname, strlen(cfg.hostname)) < 0)
        say("hostname %s: %s", cfg.hostname, strerror(errno));
    return run_workload(&cfg);
}

/* Ends whatever the workload left running, so that nothing writes after the sync. */
static void end_leftovers(void)
{
    kill(-1, SIGKILL); /* as PID 1: every process but the init */
    for (int waited = 0; waited < LEFTOVER_WAIT_MS; waited++) {
        pid_t pid;
        while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
            ;
        if (pid < 0 && errno == ECHILD)
            return;
        sleep_ms(1);
    }
}

static void power_off(void)
{
    reboot(RB_POWER_OFF);
    say("power off: %s", strerror(errno));
    reboot(RB_HALT_SYSTEM);
    for (;;) /* PID 1 must not exit: the kernel would panic */
        pause();
}

int main(int argc, char **argv)
{
    const char *mode = getenv(TEST_ENV);
    test_mode = mode && strcmp(mode, "1") == 0;
    if (test_mode) {
        prctl(PR_SET_CHILD_SUBREAPER, 1);
        int status = EXIT_INIT_FAILED;
        if (argc != 2)
            say("usage: " TEST_ENV "=1 %s CONFIG", argc ? argv[0] : "init");
        else
            status = boot_and_run(argv[1]);
        report_exit(status);
        return 0;
    }
    if (getpid() != 1) {
        say("not PID 1: this is a guest's init; to test it, set " TEST_ENV "=1 and pass a config");
        return EXIT_INIT_FAILED;
    }
    ports_open();
    milestone(MILESTONE_INIT_STARTED);
    int status = boot_and_run(CONFIG_PATH);
    end_leftovers();
    sync();
    quiesce_root();
    /* The VMM ends the VM at the report: let the console's UART send what the workload
     * wrote first (with several vCPUs its interrupt-driven output lags behind the exit). */
    drain_console();
    report_exit(status);
    power_off();
}
