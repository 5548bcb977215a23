// SPDX-License-Identifier: GPL-2.0
/*
 * wdfhil guest driver for the ivshmem-doorbell device (PCI 1af4:1110).
 *
 * The device's registers, rings and data live in BAR2 (shared memory that a
 * Python process on the host serves); this driver only does what user space
 * cannot: enable bus mastering and MSI-X, ring the doorbell in BAR0 and turn
 * interrupts into something a process can block on. Everything else (rings,
 * descriptors) is done by the guest agent through an mmap of BAR2.
 *
 * Per device, a character device /dev/wdfhilN:
 *   mmap   offset 0 = BAR2 (uncached: the rings are shared with another
 *          process and plain stores must reach memory in program order)
 *   write  a u32 vector: rings doorbell (device_peer << 16) | vector, where
 *          device_peer is read from the BAR2 header at every ring
 *   read   8 bytes: the device's total interrupt count; blocks until an
 *          interrupt arrived since this file's previous read (interrupts can
 *          merge, so callers must look at the ring indices, not the count)
 *   poll   readable when read would not block; POLLHUP once the device is gone
 *
 * The device is untrusted: probe checks magic and ABI version and refuses a
 * device that does not look right; hot-unplug while files are open or BAR2
 * is mapped is handled (the mappings are zapped, calls return -ENODEV).
 */
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/rwsem.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include "wdfhil_abi.h"

#define WDFHIL_NAME "wdfhil_pci"
#define WDFHIL_MAX_DEVICES 64
#define IVSHMEM_BAR0_MIN (WH_BAR0_DOORBELL + 4)
/* The part of BAR2 the guest side relies on: header and both rings. */
#define WDFHIL_BAR2_MIN (WH_CQ_OFFSET + WH_RING_ENTRIES * WH_CQE_SIZE)

struct wdfhil_dev {
	struct device dev;		/* the class device; its release frees us */
	struct cdev cdev;
	struct pci_dev *pdev;
	int minor;
	void __iomem *bar0;
	void __iomem *hdr;		/* first page of BAR2: the ABI header */
	resource_size_t bar2_start;
	resource_size_t bar2_len;
	int nvec;
	char irq_names[WH_NUM_VECTORS][24];
	atomic64_t irq_count;
	atomic64_t vec_count[WH_NUM_VECTORS];
	wait_queue_head_t wq;
	/* Held for reading while BAR0/BAR2 are used, for writing by remove(). */
	struct rw_semaphore hw_lock;
	bool dead;
	struct mutex files_lock;
	struct list_head files;		/* open files, to zap their mappings */
};

struct wdfhil_file {
	struct wdfhil_dev *wdev;
	struct file *filp;
	struct list_head node;
	u64 seen;			/* irq_count at this file's last read */
};

static dev_t wdfhil_devt;
static struct class *wdfhil_class;
static DEFINE_IDA(wdfhil_ida);

static irqreturn_t wdfhil_irq(int irq, void *data)
{
	struct wdfhil_dev *wdev = data;
	int i;

	for (i = 0; i < wdev->nvec; i++) {
		if (pci_irq_vector(wdev->pdev, i) == irq) {
			atomic64_inc(&wdev->vec_count[i]);
			break;
		}
	}
	atomic64_inc(&wdev->irq_count);
	wake_up_interruptible_all(&wdev->wq);
	return IRQ_HANDLED;
}

static int wdfhil_open(struct inode *inode, struct file *filp)
{
	struct wdfhil_dev *wdev = container_of(inode->i_cdev, struct wdfhil_dev, cdev);
	struct wdfhil_file *wf;

	wf = kzalloc(sizeof(*wf), GFP_KERNEL);
	if (!wf)
		return -ENOMEM;
	down_read(&wdev->hw_lock);
	if (wdev->dead) {
		up_read(&wdev->hw_lock);
		kfree(wf);
		return -ENODEV;
	}
	get_device(&wdev->dev);
	wf->wdev = wdev;
	wf->filp = filp;
	wf->seen = atomic64_read(&wdev->irq_count);
	mutex_lock(&wdev->files_lock);
	list_add(&wf->node, &wdev->files);
	mutex_unlock(&wdev->files_lock);
	up_read(&wdev->hw_lock);
	filp->private_data = wf;
	return nonseekable_open(inode, filp);
}

static int wdfhil_release(struct inode *inode, struct file *filp)
{
	struct wdfhil_file *wf = filp->private_data;
	struct wdfhil_dev *wdev = wf->wdev;

	mutex_lock(&wdev->files_lock);
	list_del(&wf->node);
	mutex_unlock(&wdev->files_lock);
	kfree(wf);
	put_device(&wdev->dev);
	return 0;
}

static ssize_t wdfhil_read(struct file *filp, char __user *buf, size_t count, loff_t *ppos)
{
	struct wdfhil_file *wf = filp->private_data;
	struct wdfhil_dev *wdev = wf->wdev;
	u64 now;
	int ret;

	if (count < sizeof(now))
		return -EINVAL;
	for (;;) {
		if (READ_ONCE(wdev->dead))
			return -ENODEV;
		now = atomic64_read(&wdev->irq_count);
		if (now != wf->seen)
			break;
		if (filp->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(wdev->wq,
			atomic64_read(&wdev->irq_count) != wf->seen || READ_ONCE(wdev->dead));
		if (ret)
			return ret;
	}
	wf->seen = now;
	if (copy_to_user(buf, &now, sizeof(now)))
		return -EFAULT;
	return sizeof(now);
}

static __poll_t wdfhil_poll(struct file *filp, struct poll_table_struct *wait)
{
	struct wdfhil_file *wf = filp->private_data;
	struct wdfhil_dev *wdev = wf->wdev;
	__poll_t mask = 0;

	poll_wait(filp, &wdev->wq, wait);
	if (READ_ONCE(wdev->dead))
		return EPOLLHUP | EPOLLERR;
	if (atomic64_read(&wdev->irq_count) != wf->seen)
		mask |= EPOLLIN | EPOLLRDNORM;
	mask |= EPOLLOUT | EPOLLWRNORM;
	return mask;
}

static ssize_t wdfhil_write(struct file *filp, const char __user *buf, size_t count, loff_t *ppos)
{
	struct wdfhil_file *wf = filp->private_data;
	struct wdfhil_dev *wdev = wf->wdev;
	u32 vector, peer;
	ssize_t ret = sizeof(vector);

	if (count != sizeof(vector))
		return -EINVAL;
	if (copy_from_user(&vector, buf, sizeof(vector)))
		return -EFAULT;
	if (vector >= WH_NUM_VECTORS)
		return -EINVAL;
	down_read(&wdev->hw_lock);
	if (wdev->dead) {
		ret = -ENODEV;
		goto out;
	}
	peer = ioread32(wdev->hdr + WH_HDR_DEVICE_PEER);
	if (peer > 0xffff) {
		dev_err_ratelimited(&wdev->pdev->dev, "device_peer %u in BAR2 is not a peer id\n", peer);
		ret = -EIO;
		goto out;
	}
	/* What user space wrote into the rings must be visible before the ring. */
	wmb();
	iowrite32((peer << 16) | vector, wdev->bar0 + WH_BAR0_DOORBELL);
out:
	up_read(&wdev->hw_lock);
	return ret;
}

static int wdfhil_mmap(struct file *filp, struct vm_area_struct *vma)
{
	struct wdfhil_file *wf = filp->private_data;
	struct wdfhil_dev *wdev = wf->wdev;
	int ret;

	/* A private (copy-on-write) mapping of device memory makes no sense. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	down_read(&wdev->hw_lock);
	if (wdev->dead) {
		ret = -ENODEV;
		goto out;
	}
	/*
	 * Uncached: the agent publishes ring indices with plain stores and the
	 * peer is another process, so no write-combining reordering is wanted.
	 */
	vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
	/* Checks offset and length against the BAR and sets VM_IO | VM_PFNMAP. */
	ret = vm_iomap_memory(vma, wdev->bar2_start, wdev->bar2_len);
out:
	up_read(&wdev->hw_lock);
	return ret;
}

static const struct file_operations wdfhil_fops = {
	.owner = THIS_MODULE,
	.open = wdfhil_open,
	.release = wdfhil_release,
	.read = wdfhil_read,
	.write = wdfhil_write,
	.poll = wdfhil_poll,
	.mmap = wdfhil_mmap,
	.llseek = no_llseek,
};

static ssize_t interrupts_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct wdfhil_dev *wdev = container_of(dev, struct wdfhil_dev, dev);

	return sysfs_emit(buf, "%llu\n", (unsigned long long)atomic64_read(&wdev->irq_count));
}
static DEVICE_ATTR_RO(interrupts);

static ssize_t vectors_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct wdfhil_dev *wdev = container_of(dev, struct wdfhil_dev, dev);

	return sysfs_emit(buf, "%d\n", wdev->nvec);
}
static DEVICE_ATTR_RO(vectors);

static struct attribute *wdfhil_attrs[] = {
	&dev_attr_interrupts.attr,
	&dev_attr_vectors.attr,
	NULL,
};
ATTRIBUTE_GROUPS(wdfhil);

static void wdfhil_dev_release(struct device *dev)
{
	struct wdfhil_dev *wdev = container_of(dev, struct wdfhil_dev, dev);

	if (wdev->minor >= 0)
		ida_free(&wdfhil_ida, wdev->minor);
	kfree(wdev);
}

/* Refuses a device whose BAR2 header is not this ABI (absent server, other ABI, hostile). */
static int wdfhil_check_header(struct wdfhil_dev *wdev)
{
	struct device *dev = &wdev->pdev->dev;
	u32 magic = ioread32(wdev->hdr + WH_HDR_MAGIC);
	u32 version = ioread32(wdev->hdr + WH_HDR_ABI_VERSION);
	u32 entries = ioread32(wdev->hdr + WH_HDR_RING_ENTRIES);

	if (magic != WH_MAGIC) {
		dev_err(dev, "BAR2 magic is 0x%08x, expected 0x%08x: not a wdfhil device (is the device server running?)\n",
			magic, WH_MAGIC);
		return -ENODEV;
	}
	if (version != WH_ABI_VERSION) {
		dev_err(dev, "device ABI version %u, this driver speaks %u\n", version, WH_ABI_VERSION);
		return -ENODEV;
	}
	if (entries != WH_RING_ENTRIES) {
		dev_err(dev, "device ring_entries %u, ABI says %u\n", entries, WH_RING_ENTRIES);
		return -ENODEV;
	}
	return 0;
}

static int wdfhil_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct wdfhil_dev *wdev;
	int ret, i;

	wdev = kzalloc(sizeof(*wdev), GFP_KERNEL);
	if (!wdev)
		return -ENOMEM;
	wdev->pdev = pdev;
	wdev->minor = -1;
	init_rwsem(&wdev->hw_lock);
	mutex_init(&wdev->files_lock);
	INIT_LIST_HEAD(&wdev->files);
	init_waitqueue_head(&wdev->wq);
	atomic64_set(&wdev->irq_count, 0);
	/* From here on the struct device owns wdev: error paths end in put_device. */
	device_initialize(&wdev->dev);
	wdev->dev.class = wdfhil_class;
	wdev->dev.parent = &pdev->dev;
	wdev->dev.release = wdfhil_dev_release;
	wdev->dev.groups = wdfhil_groups;

	ret = pci_enable_device(pdev);
	if (ret) {
		dev_err(&pdev->dev, "cannot enable PCI device: %d\n", ret);
		goto err_put;
	}
	ret = pci_request_regions(pdev, WDFHIL_NAME);
	if (ret) {
		dev_err(&pdev->dev, "BARs busy: %d\n", ret);
		goto err_disable;
	}
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < IVSHMEM_BAR0_MIN ||
	    !(pci_resource_flags(pdev, 2) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 2) < WDFHIL_BAR2_MIN) {
		dev_err(&pdev->dev, "BAR0 (%pR) or BAR2 (%pR) missing or too small (BAR2 needs %u bytes)\n",
			&pdev->resource[0], &pdev->resource[2], (unsigned int)WDFHIL_BAR2_MIN);
		ret = -ENODEV;
		goto err_regions;
	}
	wdev->bar2_start = pci_resource_start(pdev, 2);
	wdev->bar2_len = pci_resource_len(pdev, 2);
	wdev->bar0 = pci_iomap(pdev, 0, IVSHMEM_BAR0_MIN);
	wdev->hdr = pci_iomap_range(pdev, 2, 0, PAGE_SIZE);
	if (!wdev->bar0 || !wdev->hdr) {
		dev_err(&pdev->dev, "cannot map BAR0/BAR2\n");
		ret = -ENOMEM;
		goto err_unmap;
	}
	ret = wdfhil_check_header(wdev);
	if (ret)
		goto err_unmap;
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret) {
		dev_err(&pdev->dev, "no usable DMA mask: %d\n", ret);
		goto err_unmap;
	}
	pci_set_master(pdev);

	ret = pci_alloc_irq_vectors(pdev, 1, WH_NUM_VECTORS, PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(&pdev->dev, "MSI-X unavailable (%d): the device needs vectors>=1 and a doorbell server\n",
			ret);
		goto err_master;
	}
	wdev->nvec = ret;
	for (i = 0; i < wdev->nvec; i++) {
		snprintf(wdev->irq_names[i], sizeof(wdev->irq_names[i]), "wdfhil-%s-%d",
			 pci_name(pdev), i);
		ret = request_irq(pci_irq_vector(pdev, i), wdfhil_irq, 0, wdev->irq_names[i], wdev);
		if (ret) {
			dev_err(&pdev->dev, "cannot request MSI-X vector %d: %d\n", i, ret);
			while (--i >= 0)
				free_irq(pci_irq_vector(pdev, i), wdev);
			goto err_vectors;
		}
	}

	ret = ida_alloc_max(&wdfhil_ida, WDFHIL_MAX_DEVICES - 1, GFP_KERNEL);
	if (ret < 0) {
		dev_err(&pdev->dev, "no free minor number: %d\n", ret);
		goto err_irqs;
	}
	wdev->minor = ret;
	wdev->dev.devt = MKDEV(MAJOR(wdfhil_devt), wdev->minor);
	ret = dev_set_name(&wdev->dev, "wdfhil%d", wdev->minor);
	if (ret)
		goto err_irqs;
	cdev_init(&wdev->cdev, &wdfhil_fops);
	wdev->cdev.owner = THIS_MODULE;
	pci_set_drvdata(pdev, wdev);
	ret = cdev_device_add(&wdev->cdev, &wdev->dev);
	if (ret) {
		dev_err(&pdev->dev, "cannot add /dev/wdfhil%d: %d\n", wdev->minor, ret);
		goto err_irqs;
	}
	dev_info(&pdev->dev, "wdfhil%d: ABI %u, BAR2 %pR, device peer %u, %d MSI-X vector(s)\n",
		 wdev->minor, WH_ABI_VERSION, &pdev->resource[2],
		 ioread32(wdev->hdr + WH_HDR_DEVICE_PEER), wdev->nvec);
	return 0;

err_irqs:
	for (i = 0; i < wdev->nvec; i++)
		free_irq(pci_irq_vector(pdev, i), wdev);
err_vectors:
	pci_free_irq_vectors(pdev);
err_master:
	pci_clear_master(pdev);
err_unmap:
	if (wdev->hdr)
		pci_iounmap(pdev, wdev->hdr);
	if (wdev->bar0)
		pci_iounmap(pdev, wdev->bar0);
err_regions:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_put:
	pci_set_drvdata(pdev, NULL);
	put_device(&wdev->dev);
	return ret;
}

static void wdfhil_remove(struct pci_dev *pdev)
{
	struct wdfhil_dev *wdev = pci_get_drvdata(pdev);
	struct wdfhil_file *wf;
	int i;

	cdev_device_del(&wdev->cdev, &wdev->dev);
	down_write(&wdev->hw_lock);
	WRITE_ONCE(wdev->dead, true);
	up_write(&wdev->hw_lock);
	/* BAR2 is about to vanish: later touches of an old mapping get SIGBUS. */
	mutex_lock(&wdev->files_lock);
	list_for_each_entry(wf, &wdev->files, node)
		unmap_mapping_range(wf->filp->f_mapping, 0, 0, 1);
	mutex_unlock(&wdev->files_lock);
	wake_up_interruptible_all(&wdev->wq);
	for (i = 0; i < wdev->nvec; i++)
		free_irq(pci_irq_vector(pdev, i), wdev);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	pci_iounmap(pdev, wdev->hdr);
	pci_iounmap(pdev, wdev->bar0);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	pci_set_drvdata(pdev, NULL);
	dev_info(&pdev->dev, "wdfhil%d removed\n", wdev->minor);
	put_device(&wdev->dev);
}

static const struct pci_device_id wdfhil_ids[] = {
	{ PCI_DEVICE(WH_PCI_VENDOR_ID, WH_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, wdfhil_ids);

static struct pci_driver wdfhil_driver = {
	.name = WDFHIL_NAME,
	.id_table = wdfhil_ids,
	.probe = wdfhil_probe,
	.remove = wdfhil_remove,
};

static int __init wdfhil_init(void)
{
	int ret;

	ret = alloc_chrdev_region(&wdfhil_devt, 0, WDFHIL_MAX_DEVICES, "wdfhil");
	if (ret)
		return ret;
	wdfhil_class = class_create(THIS_MODULE, "wdfhil");
	if (IS_ERR(wdfhil_class)) {
		ret = PTR_ERR(wdfhil_class);
		goto err_chrdev;
	}
	ret = pci_register_driver(&wdfhil_driver);
	if (ret)
		goto err_class;
	pr_info(WDFHIL_NAME ": loaded, device ABI %u\n", WH_ABI_VERSION);
	return 0;

err_class:
	class_destroy(wdfhil_class);
err_chrdev:
	unregister_chrdev_region(wdfhil_devt, WDFHIL_MAX_DEVICES);
	return ret;
}

static void __exit wdfhil_exit(void)
{
	pci_unregister_driver(&wdfhil_driver);
	class_destroy(wdfhil_class);
	unregister_chrdev_region(wdfhil_devt, WDFHIL_MAX_DEVICES);
	ida_destroy(&wdfhil_ida);
}

module_init(wdfhil_init);
module_exit(wdfhil_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("wdfhil ivshmem-doorbell device driver");
