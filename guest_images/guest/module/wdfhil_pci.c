// SPDX-License-Identifier: GPL-2.0
/* wdfhil guest driver for the ivshmem-doorbell device (first version: loads). */
#include <linux/module.h>
#include "wdfhil_abi.h"

static int __init wdfhil_init(void)
{
	pr_info("wdfhil_pci: loaded, ABI %u\n", WH_ABI_VERSION);
	return 0;
}

static void __exit wdfhil_exit(void)
{
}

module_init(wdfhil_init);
module_exit(wdfhil_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("wdfhil ivshmem-doorbell device driver");
