/* Module parameters from the kernel command line, as modprobe passes them.
 *
 * The kernel applies `MODULE.PARAM=VALUE` command-line parameters only to built-in code; for
 * a module loaded later, user space must hand them to finit_module(2) itself (modprobe reads
 * /proc/cmdline for this). vmrun's init does the same, so `virtio_mmio.device=...` or
 * `virtio_blk.queue_depth=...` on the command line reach a modular driver.
 */
#ifndef VMRUN_INIT_MODPARAMS_H
#define VMRUN_INIT_MODPARAMS_H

#include <stddef.h>

/* The module's name from its file's path: the base name up to `.ko`, `-` read as `_`
 * (/lib/modules/x/virtio-blk.ko.xz -> virtio_blk). Writes at most `size` bytes with the NUL;
 * returns -1 when it does not fit. */
int module_name(const char *path, char *out, size_t size);

/* The parameters for module `name` found in `cmdline` (the kernel's command line, tokenized as
 * the kernel does: spaces separate, double quotes group, `--` ends the kernel's part), written
 * as finit_module's `param_values`: `PARAM` or `PARAM=VALUE` separated by spaces, VALUE in
 * double quotes when it holds a space. Returns -1 when they do not fit in `size` bytes. */
int module_params(const char *cmdline, const char *name, char *out, size_t size);

#endif
