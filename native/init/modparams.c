/* Module parameters from the kernel command line; see modparams.h. */
#define _GNU_SOURCE
#include "modparams.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

int module_name(const char *path, char *out, size_t size)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *ko = strstr(base, ".ko");
    size_t len = ko ? (size_t)(ko - base) : strlen(base);
    if (len == 0 || len >= size)
        return -1;
    for (size_t i = 0; i < len; i++)
        out[i] = base[i] == '-' ? '_' : base[i];
    out[len] = '\0';
    return 0;
}

/* One token of the command line, as the kernel's next_arg() reads it: a leading quote
 * opens a quoted token, quotes toggle grouping, the value loses its surrounding quotes.
 * Returns the rest of the line after the token. */
static const char *next_arg(const char *s, const char **param, size_t *param_len,
                            const char **val, size_t *val_len)
{
    bool in_quote = false, quoted = false;
    size_t i, equals = 0;
    if (*s == '"') {
        s++;
        in_quote = quoted = true;
    }
    for (i = 0; s[i]; i++) {
        if ((s[i] == ' ' || s[i] == '\t' || s[i] == '\n') && !in_quote)
            break;
        if (equals == 0 && s[i] == '=')
            equals = i;
        if (s[i] == '"')
            in_quote = !in_quote;
    }
    size_t end = i;
    if (quoted && end > 0 && s[end - 1] == '"')
        end--;
    *param = s;
    if (equals == 0) {
        *param_len = end;
        *val = NULL;
        *val_len = 0;
    } else {
        *param_len = equals;
        *val = s + equals + 1;
        *val_len = end - equals - 1;
        if (*val_len > 0 && **val == '"') {
            (*val)++;
            (*val_len)--;
            if (*val_len > 0 && (*val)[*val_len - 1] == '"')
                (*val_len)--;
        }
    }
    return s + i;
}

/* Whether `param` (len bytes) is `name.` + something, `-` and `_` alike. */
static bool for_module(const char *param, size_t len, const char *name)
{
    size_t n = strlen(name);
    if (len <= n + 1 || param[n] != '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = param[i] == '-' ? '_' : param[i];
        if (c != name[i])
            return false;
    }
    return true;
}

int module_params(const char *cmdline, const char *name, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (const char *s = cmdline;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (!*s)
            return 0;
        const char *param, *val;
        size_t param_len, val_len;
        s = next_arg(s, &param, &param_len, &val, &val_len);
        if (param_len == 2 && strncmp(param, "--", 2) == 0 && !val)
            return 0; /* the rest is init's */
        if (!for_module(param, param_len, name))
            continue;
        size_t n = strlen(name) + 1;
        int w;
        if (!val)
            w = snprintf(out + used, size - used, "%s%.*s", used ? " " : "", (int)(param_len - n),
                         param + n);
        else
            w = snprintf(out + used, size - used, memchr(val, ' ', val_len) ? "%s%.*s=\"%.*s\"" :
                                                                               "%s%.*s=%.*s",
                         used ? " " : "", (int)(param_len - n), param + n, (int)val_len, val);
        if (w < 0 || (size_t)w >= size - used)
            return -1;
        used += (size_t)w;
    }
}
