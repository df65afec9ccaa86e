/* The guest init's configuration: the file /vmrun/config that the host writes into the
 * initramfs, and its parser.
 *
 * Format (version 1; native/init/README.md says the same for the writer's side):
 *
 *   - A sequence of lines, each ended by LF (0x0a). The first line is exactly
 *     `vmrun-init-config 1`; the last line is exactly `end` (so a truncated file is refused),
 *     and nothing may follow it.
 *   - Every other line is `KEY VALUE`: a key, ONE space, and the value, which runs to the end
 *     of the line (spaces in it are data). A key alone (`KEY`) has an empty value.
 *     Empty lines and lines starting with `#` are ignored.
 *   - Values are escaped: `\\` is a backslash, `\n` LF, `\r` CR, `\t` TAB, `\xHH` the byte
 *     with hex value HH (00 refused: values are C strings). Any other byte stands for itself
 *     (UTF-8 passes through). A backslash followed by anything else is an error. The writer
 *     must escape `\` and LF, and should escape every byte below 0x20 and 0x7f.
 *   - Keys (`*` may repeat, in order; the others at most once):
 *       hostname NAME           guest host name (default `vmrun`)
 *       module* PATH            kernel module to load with finit_module(2), in order
 *       env* NAME=VALUE         workload environment entry; NAME non-empty, no `=`, unique
 *       workdir PATH            working directory of the workload (default `/`)
 *       rlimit* NAME SOFT HARD  setrlimit for the workload; NAME as in RLIMIT_NAME lower-cased
 *                               (nofile, nproc, core, ...), unique; SOFT, HARD decimal, -1 =
 *                               unlimited, SOFT <= HARD
 *       root KIND               `initramfs` (default), `fs` or `block`
 *       root-tag TAG            fs: the virtio-fs tag to mount (mount -t virtiofs TAG)
 *       root-device PATH        block: the device node, e.g. /dev/vda
 *       root-fstype TYPE        block: file system type (required for block)
 *       root-options OPTS       fs, block: mount options, comma separated (ro, noatime, ... are
 *                               turned into mount flags, the rest is passed to the fs)
 *       exec PATH               the workload's program (required); without `/`, looked up in
 *                               the workload's PATH
 *       arg* ARG                the workload's arguments after argv[0] (= exec), in order
 *       console PATH            absolute path of the terminal the init takes for its stdio and
 *                               the workload's session instead of /dev/console (e.g.
 *                               /dev/hvc0); waited for after the modules are loaded
 *       stdio-port* FD NAME     FD is 0, 1 or 2, each once; NAME non-empty, each once: the
 *                               virtio port named NAME becomes the workload's FD
 *       virtio-ports TOTAL NAMED  the VM's virtio console ports, all and named ones: the
 *                               init waits for them before the workload starts
 *   - Unknown keys, a repeated single key, or a field a root kind does not use are errors.
 *
 * Ownership: config_parse() takes the file's bytes and returns a config whose strings all
 * point into one heap buffer it owns; the init never frees it (it lives until power-off).
 */
#ifndef VMRUN_INIT_CONFIG_H
#define VMRUN_INIT_CONFIG_H

#include <stddef.h>
#include <sys/resource.h>

#define CONFIG_MAGIC "vmrun-init-config 1"
#define CONFIG_END "end"
#define CONFIG_MAX_BYTES (4u << 20) /* a larger file is refused */
#define DEFAULT_HOSTNAME "vmrun"
#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

enum root_kind { ROOT_INITRAMFS, ROOT_FS, ROOT_BLOCK };

struct rlimit_entry {
    int resource; /* RLIMIT_* */
    const char *name;
    struct rlimit limit;
};

struct config {
    const char *hostname;
    const char **modules; /* n_modules entries */
    size_t n_modules;
    const char **env; /* NAME=VALUE entries, NULL-terminated; PATH added if absent */
    size_t n_env;
    const char *workdir;
    struct rlimit_entry *rlimits;
    size_t n_rlimits;
    enum root_kind root;
    const char *root_tag;
    const char *root_device;
    const char *root_fstype;
    const char *root_options;
    const char **argv; /* exec, then each arg; NULL-terminated */
    size_t argc;
    const char *console;        /* NULL: the console the kernel gave (/dev/console) */
    const char *stdio_ports[3]; /* the virtio port name for fds 0..2; NULL: none */
    unsigned vports_total;      /* virtio-ports: ports of every virtio console, */
    unsigned vports_named;      /* and how many of them have a name */
};

/* Parses `size` bytes of `text` (not NUL-terminated; not kept). On success fills `out` and
 * returns 0. On error returns -1 and writes a message naming the line into err[errlen]. */
int config_parse(const char *text, size_t size, struct config *out, char *err, size_t errlen);

/* Reads and parses the file at `path`; errors as config_parse, including the read's. */
int config_load(const char *path, struct config *out, char *err, size_t errlen);

#endif
