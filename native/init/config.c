/* Parser of /vmrun/config; the format is documented in config.h and README.md. */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct parser {
    struct config *cfg;
    unsigned line; /* 1-based number of the line being parsed */
    char *err;
    size_t errlen;
    /* which single keys were seen, to refuse repeats */
    unsigned seen;
};

static int fail(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct parser *p, const char *fmt, ...)
{
    va_list ap;
    int n = p->line ? snprintf(p->err, p->errlen, "line %u: ", p->line) : 0;
    if (n < 0 || (size_t)n >= p->errlen)
        return -1;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Unescapes the NUL-terminated `s` in place (the result is never longer). */
static int unescape(struct parser *p, char *s)
{
    char *out = s;
    for (const char *in = s; *in; in++) {
        if (*in != '\\') {
            *out++ = *in;
            continue;
        }
        switch (*++in) {
        case '\\': *out++ = '\\'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'x': {
            int hi = in[1] ? hexval(in[1]) : -1;
            int lo = hi >= 0 && in[2] ? hexval(in[2]) : -1;
            if (hi < 0 || lo < 0)
                return fail(p, "\\x needs two hex digits");
            if (hi == 0 && lo == 0)
                return fail(p, "\\x00: a value cannot hold a NUL byte");
            *out++ = (char)(hi << 4 | lo);
            in += 2;
            break;
        }
        case '\0': return fail(p, "a value ends with a lone backslash");
        default: return fail(p, "unknown escape \\%c", *in);
        }
    }
    *out = '\0';
    return 0;
}

/* Appends `item` to a growing array of `size`-byte items. */
static int push(struct parser *p, void *array_ptr, size_t *count, const void *item, size_t size)
{
    void **array = array_ptr;
    /* one spare slot: string arrays keep a NULL terminator after the last entry */
    void *grown = realloc(*array, (*count + 2) * size);
    if (!grown)
        return fail(p, "out of memory");
    *array = grown;
    memcpy((char *)grown + *count * size, item, size);
    memset((char *)grown + (*count + 1) * size, 0, size);
    (*count)++;
    return 0;
}

static int push_string(struct parser *p, const char ***array, size_t *count, const char *s)
{
    return push(p, array, count, &s, sizeof s);
}

static const struct {
    const char *name;
    int resource;
} rlimit_names[] = {
    {"as", RLIMIT_AS},           {"core", RLIMIT_CORE},         {"cpu", RLIMIT_CPU},
    {"data", RLIMIT_DATA},       {"fsize", RLIMIT_FSIZE},       {"locks", RLIMIT_LOCKS},
    {"memlock", RLIMIT_MEMLOCK}, {"msgqueue", RLIMIT_MSGQUEUE}, {"nice", RLIMIT_NICE},
    {"nofile", RLIMIT_NOFILE},   {"nproc", RLIMIT_NPROC},       {"rss", RLIMIT_RSS},
    {"rtprio", RLIMIT_RTPRIO},   {"rttime", RLIMIT_RTTIME},     {"sigpending", RLIMIT_SIGPENDING},
    {"stack", RLIMIT_STACK},
};

/* A decimal limit: -1 (unlimited) or 0..2^64-2. Advances *s past it. */
static int parse_limit(struct parser *p, char **s, rlim_t *out)
{
    char *end;
    if (strncmp(*s, "-1", 2) == 0 && ((*s)[2] == ' ' || (*s)[2] == '\0')) {
        *out = RLIM_INFINITY;
        *s += 2;
        return 0;
    }
    if (**s < '0' || **s > '9')
        return fail(p, "rlimit: a limit is a decimal number or -1");
    errno = 0;
    unsigned long long v = strtoull(*s, &end, 10);
    if (errno || (*end != ' ' && *end != '\0') || (rlim_t)v == RLIM_INFINITY)
        return fail(p, "rlimit: a limit is a decimal number or -1");
    *out = (rlim_t)v;
    *s = end;
    return 0;
}

static int parse_rlimit(struct parser *p, char *value)
{
    struct config *cfg = p->cfg;
    struct rlimit_entry entry = {.resource = -1};
    char *space = strchr(value, ' ');
    if (!space)
        return fail(p, "rlimit wants NAME SOFT HARD");
    *space = '\0';
    for (size_t i = 0; i < sizeof rlimit_names / sizeof rlimit_names[0]; i++)
        if (strcmp(value, rlimit_names[i].name) == 0) {
            entry.resource = rlimit_names[i].resource;
            entry.name = rlimit_names[i].name;
        }
    if (entry.resource < 0)
        return fail(p, "unknown rlimit '%s'", value);
    for (size_t i = 0; i < cfg->n_rlimits; i++)
        if (cfg->rlimits[i].resource == entry.resource)
            return fail(p, "rlimit '%s' given twice", value);
    char *s = space + 1;
    if (parse_limit(p, &s, &entry.limit.rlim_cur) < 0)
        return -1;
    if (*s++ != ' ')
        return fail(p, "rlimit wants NAME SOFT HARD");
    if (parse_limit(p, &s, &entry.limit.rlim_max) < 0)
        return -1;
    if (*s != '\0')
        return fail(p, "rlimit wants NAME SOFT HARD");
    if (entry.limit.rlim_cur > entry.limit.rlim_max) /* RLIM_INFINITY is the largest */
        return fail(p, "rlimit '%s': soft limit above hard limit", entry.name);
    return push(p, &cfg->rlimits, &cfg->n_rlimits, &entry, sizeof entry);
}

static int parse_env(struct parser *p, const char *value)
{
    struct config *cfg = p->cfg;
    const char *eq = strchr(value, '=');
    if (!eq || eq == value)
        return fail(p, "env wants NAME=VALUE with a non-empty NAME");
    size_t namelen = (size_t)(eq - value) + 1; /* with the '=' */
    for (size_t i = 0; i < cfg->n_env; i++)
        if (strncmp(cfg->env[i], value, namelen) == 0)
            return fail(p, "env %.*s given twice", (int)(namelen - 1), value);
    return push_string(p, &cfg->env, &cfg->n_env, value);
}

/* `FD NAME`: FD one of 0, 1, 2 and NAME non-empty, each given once (a port opens only once:
 * the guest's virtio_console driver refuses a second open with EBUSY). */
static int parse_stdio_port(struct parser *p, const char *value)
{
    struct config *cfg = p->cfg;
    if (value[0] < '0' || value[0] > '2' || value[1] != ' ')
        return fail(p, "stdio-port wants FD NAME, FD 0, 1 or 2");
    int fd = value[0] - '0';
    const char *name = value + 2;
    if (!*name)
        return fail(p, "stdio-port %d: the port name is empty", fd);
    if (cfg->stdio_ports[fd])
        return fail(p, "stdio-port %d given twice", fd);
    for (int other = 0; other < 3; other++)
        if (cfg->stdio_ports[other] && strcmp(cfg->stdio_ports[other], name) == 0)
            return fail(p, "stdio-port %d: port '%s' is already fd %d's", fd, name, other);
    cfg->stdio_ports[fd] = name;
    return 0;
}

enum single_key {
    KEY_HOSTNAME, KEY_WORKDIR, KEY_ROOT, KEY_ROOT_TAG, KEY_ROOT_DEVICE, KEY_ROOT_FSTYPE,
    KEY_ROOT_OPTIONS, KEY_EXEC, KEY_CONSOLE, KEY_VIRTIO_PORTS,
};

static const char *const single_keys[] = {
    [KEY_HOSTNAME] = "hostname",        [KEY_WORKDIR] = "workdir",
    [KEY_ROOT] = "root",                [KEY_ROOT_TAG] = "root-tag",
    [KEY_ROOT_DEVICE] = "root-device",  [KEY_ROOT_FSTYPE] = "root-fstype",
    [KEY_ROOT_OPTIONS] = "root-options", [KEY_EXEC] = "exec",
    [KEY_CONSOLE] = "console",          [KEY_VIRTIO_PORTS] = "virtio-ports",
};

static int parse_single(struct parser *p, enum single_key key, char *value)
{
    struct config *cfg = p->cfg;
    if (p->seen & (1u << key))
        return fail(p, "'%s' given twice", single_keys[key]);
    p->seen |= 1u << key;
    switch (key) {
    case KEY_HOSTNAME: cfg->hostname = value; break;
    case KEY_WORKDIR: cfg->workdir = value; break;
    case KEY_ROOT_TAG: cfg->root_tag = value; break;
    case KEY_ROOT_DEVICE: cfg->root_device = value; break;
    case KEY_ROOT_FSTYPE: cfg->root_fstype = value; break;
    case KEY_ROOT_OPTIONS: cfg->root_options = value; break;
    case KEY_CONSOLE:
        if (value[0] != '/')
            return fail(p, "console wants an absolute path, not '%s'", value);
        cfg->console = value;
        break;
    case KEY_VIRTIO_PORTS: {
        unsigned total, named;
        int end = 0;
        if (sscanf(value, "%4u %4u%n", &total, &named, &end) != 2 || value[end] != '\0' ||
            !isdigit((unsigned char)value[0]) || named > total)
            return fail(p, "virtio-ports wants TOTAL NAMED, NAMED <= TOTAL, not '%s'", value);
        cfg->vports_total = total;
        cfg->vports_named = named;
        break;
    }
    case KEY_EXEC:
        if (!*value)
            return fail(p, "exec is empty");
        if (!cfg->argc) /* else an arg came first and left argv[0] for exec */
            return push_string(p, &cfg->argv, &cfg->argc, value);
        cfg->argv[0] = value;
        break;
    case KEY_ROOT:
        if (strcmp(value, "initramfs") == 0)
            cfg->root = ROOT_INITRAMFS;
        else if (strcmp(value, "fs") == 0)
            cfg->root = ROOT_FS;
        else if (strcmp(value, "block") == 0)
            cfg->root = ROOT_BLOCK;
        else
            return fail(p, "root is initramfs, fs or block, not '%s'", value);
        break;
    }
    return 0;
}

static int parse_line(struct parser *p, char *line)
{
    struct config *cfg = p->cfg;
    char *value = strchr(line, ' ');
    if (value)
        *value++ = '\0';
    else
        value = line + strlen(line);
    if (unescape(p, value) < 0)
        return -1;
    for (size_t k = 0; k < sizeof single_keys / sizeof single_keys[0]; k++)
        if (strcmp(line, single_keys[k]) == 0)
            return parse_single(p, (enum single_key)k, value);
    if (strcmp(line, "module") == 0) {
        if (!*value)
            return fail(p, "module wants a path");
        return push_string(p, &cfg->modules, &cfg->n_modules, value);
    }
    if (strcmp(line, "env") == 0)
        return parse_env(p, value);
    if (strcmp(line, "rlimit") == 0)
        return parse_rlimit(p, value);
    if (strcmp(line, "stdio-port") == 0)
        return parse_stdio_port(p, value);
    if (strcmp(line, "arg") == 0) {
        /* argv[0] is exec's; an arg before the exec line keeps its place empty */
        if (!cfg->argc && push_string(p, &cfg->argv, &cfg->argc, NULL) < 0)
            return -1;
        return push_string(p, &cfg->argv, &cfg->argc, value);
    }
    return fail(p, "unknown key '%s'", line);
}

/* Whole-file rules: what is required, and what each root kind uses. */
static int check(struct parser *p)
{
    struct config *cfg = p->cfg;
    if (!(p->seen & (1u << KEY_EXEC)))
        return fail(p, "no exec line: the workload's program is required");
    bool tag = cfg->root_tag, device = cfg->root_device, fstype = cfg->root_fstype;
    bool options = cfg->root_options;
    switch (cfg->root) {
    case ROOT_INITRAMFS:
        if (tag || device || fstype || options)
            return fail(p, "root-tag/-device/-fstype/-options need root fs or root block");
        break;
    case ROOT_FS:
        if (!tag || !*cfg->root_tag)
            return fail(p, "root fs needs a root-tag");
        if (device || fstype)
            return fail(p, "root fs takes no root-device or root-fstype");
        break;
    case ROOT_BLOCK:
        if (!device || !*cfg->root_device || !fstype || !*cfg->root_fstype)
            return fail(p, "root block needs root-device and root-fstype");
        if (tag)
            return fail(p, "root block takes no root-tag");
        break;
    }
    if (!cfg->hostname)
        cfg->hostname = DEFAULT_HOSTNAME;
    if (!cfg->workdir)
        cfg->workdir = "/";
    if (!*cfg->workdir)
        return fail(p, "workdir is empty");
    if (!cfg->root_options)
        cfg->root_options = "";
    for (size_t i = 0; i < cfg->n_env; i++)
        if (strncmp(cfg->env[i], "PATH=", 5) == 0)
            return 0;
    return push_string(p, &cfg->env, &cfg->n_env, DEFAULT_PATH);
}

int config_parse(const char *text, size_t size, struct config *out, char *err, size_t errlen)
{
    struct parser p = {.cfg = out, .err = err, .errlen = errlen};
    memset(out, 0, sizeof *out);
    char *buf = malloc(size + 1);
    if (!buf)
        return fail(&p, "out of memory");
    memcpy(buf, text, size);
    buf[size] = '\0';
    if (memchr(buf, '\0', size))
        return fail(&p, "the file holds a NUL byte (values escape it as \\x..)");

    bool ended = false;
    char *next;
    for (char *line = buf; *line; line = next) {
        p.line++;
        char *nl = strchr(line, '\n');
        if (!nl)
            return fail(&p, "the last line has no newline (file truncated?)");
        *nl = '\0';
        next = nl + 1;
        if (ended)
            return fail(&p, "text after the 'end' line");
        if (p.line == 1) {
            if (strcmp(line, CONFIG_MAGIC) != 0)
                return fail(&p, "the file does not start with '" CONFIG_MAGIC "'");
            continue;
        }
        if (strcmp(line, CONFIG_END) == 0) {
            ended = true;
            continue;
        }
        if (line[0] == '\0' || line[0] == '#')
            continue;
        if (parse_line(&p, line) < 0)
            return -1;
    }
    if (!ended)
        return fail(&p, p.line ? "no 'end' line (file truncated?)" : "the file is empty");
    p.line = 0; /* whole-file rules name no line */
    return check(&p);
}

int config_load(const char *path, struct config *out, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (st.st_size > (off_t)CONFIG_MAX_BYTES) {
        snprintf(err, errlen, "%s is larger than %u bytes", path, CONFIG_MAX_BYTES);
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *text = malloc(size + 1);
    if (!text) {
        snprintf(err, errlen, "out of memory reading %s", path);
        close(fd);
        return -1;
    }
    while (got < size) {
        ssize_t n = read(fd, text + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "cannot read %s: %s", path, n ? strerror(errno) : "short read");
            close(fd);
            free(text);
            return -1;
        }
        got += (size_t)n;
    }
    close(fd);
    int rc = config_parse(text, size, out, err, errlen);
    free(text);
    return rc;
}
