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
 *
 * Per device also /dev/wdfioN, the guest I/O node (ABI v2 request ring): each
 * open/read/write/ioctl/close of a program becomes a request entry the host
 * hands to the emulated framework (see "guest I/O" below and docs/guest-side.md).
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
#include <linux/workqueue.h>
#include <linux/semaphore.h>
#include <linux/sched/signal.h>
#include "wdfhil_abi.h"

#define WDFHIL_NAME "wdfhil_pci"
#define WDFHIL_MAX_DEVICES 64
#define IVSHMEM_BAR0_MIN (WH_BAR0_DOORBELL + 4)
/* The part of BAR2 the guest side relies on: header, the DMA rings and the request rings. */
#define WDFHIL_BAR2_MIN (WH_RCQ_OFFSET + WH_RING_ENTRIES * WH_RCQE_SIZE)
/* How long close() and a cancel wait for room in the request ring before giving up. */
#define WIO_POST_TIMEOUT_MS 10000

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

	/* guest I/O (/dev/wdfioN): the request ring */
	bool io_enabled;		/* the node exists (an MSI-X vector for completions) */
	struct cdev io_cdev;
	struct device *io_device;
	spinlock_t io_lock;		/* io_requests, the request states, rq_tail, rcq_head */
	struct list_head io_requests;	/* posted, not yet completed (including orphans) */
	u32 rq_tail, rcq_head;		/* our own copies; never read back from BAR2 */
	bool io_broken;			/* the device moved an index it must not: no more I/O */
	struct work_struct io_work;	/* takes completions (unpinning may sleep) */
	wait_queue_head_t io_wq;
	struct semaphore io_slots;	/* requests a program may have in flight */
	atomic_t io_active;		/* slots taken */
	atomic64_t io_next_id, io_next_file;
	atomic64_t io_pinned_pages, io_in_flight, io_orphans, io_submitted, io_completed;
	atomic64_t io_cancels, io_stray, io_leaked;
};

/* One request the host has (or is about to have). */
struct wio_request {
	struct list_head node;		/* on io_requests while posted, then a local list */
	struct wdfhil_dev *wdev;
	u64 id;
	u16 major;
	bool slot;			/* holds an io_slots slot */
	bool done, orphan, cancel_sent;	/* under io_lock */
	u32 status;
	u64 information;
	struct page **pages;		/* the caller's pinned pages (direct I/O) */
	unsigned int npages;
	bool pages_written;		/* the device may write them: dirty on unpin */
	void *sysbuf;			/* system buffer (buffered I/O): the allocation */
	void *sysdata;			/* where its data starts (see wio_system_buffer) */
	size_t syslen;
	u64 *table;			/* indirect PFN table */
};

struct wio_file {
	struct wdfhil_dev *wdev;
	u64 file_id;
};

struct wdfhil_file {
	struct wdfhil_dev *wdev;
	struct file *filp;
	struct list_head node;
	u64 seen;			/* irq_count at this file's last read */
};

static dev_t wdfhil_devt;		/* minors 0..MAX-1 /dev/wdfhilN, MAX.. /dev/wdfioN */
static struct class *wdfhil_class;
static struct class *wdfio_class;
static DEFINE_IDA(wdfhil_ida);

static irqreturn_t wdfhil_irq(int irq, void *data)
{
	struct wdfhil_dev *wdev = data;
	int i;

	for (i = 0; i < wdev->nvec; i++) {
		if (pci_irq_vector(wdev->pdev, i) == irq) {
			atomic64_inc(&wdev->vec_count[i]);
			if (i == WH_VECTOR_IO_COMPLETION && wdev->io_enabled)
				schedule_work(&wdev->io_work);
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

/* ------------------------------------------------------------------ guest I/O
 *
 * /dev/wdfioN: a program's open/read/write/ioctl/close become request entries
 * in the request ring (ABI v2). The rules that keep guest memory safe from a
 * slow, cancelled or hostile host:
 *
 * - A request's pages stay pinned and its system buffer and PFN table stay
 *   allocated until the host completed it. Only the completion (taken by
 *   io_work) or the waiter after it frees them.
 * - A signal while waiting sends a CANCEL entry and keeps waiting (killable).
 *   A fatal signal (the program is killed) makes the request an orphan: it
 *   stays on io_requests, pinned, and io_work frees it when its completion
 *   arrives. So a killed program leaves nothing the host could still write.
 * - Device gone (hot-unplug) or reset under our feet (the device's rq_tail no
 *   longer ours): requests in flight are never freed (io_leaked counts them):
 *   leaking is the only way to be sure a late write lands in memory nobody uses.
 * - The host's completion is not trusted: information is clamped to the
 *   buffer, output system buffers are zeroed before the host sees them.
 */

/* Rings vector: callers hold hw_lock for reading and checked !dead. */
static int wdfhil_doorbell(struct wdfhil_dev *wdev, u32 vector)
{
	u32 peer = ioread32(wdev->hdr + WH_HDR_DEVICE_PEER);

	if (peer > 0xffff) {
		dev_err_ratelimited(&wdev->pdev->dev, "device_peer %u in BAR2 is not a peer id\n", peer);
		return -EIO;
	}
	/* What was written into the rings must be visible before the ring. */
	wmb();
	iowrite32((peer << 16) | vector, wdev->bar0 + WH_BAR0_DOORBELL);
	return 0;
}

static void wio_free_request(struct wio_request *r)
{
	struct wdfhil_dev *wdev = r->wdev;

	if (r->pages) {
		if (r->pages_written)
			unpin_user_pages_dirty_lock(r->pages, r->npages, true);
		else
			unpin_user_pages(r->pages, r->npages);
		atomic64_sub(r->npages, &wdev->io_pinned_pages);
		kvfree(r->pages);
	}
	kfree(r->sysbuf);
	kfree(r->table);
	if (r->slot) {
		atomic_dec(&wdev->io_active);
		up(&wdev->io_slots);
		wake_up_all(&wdev->io_wq);	/* pollers waiting for a free slot */
	}
	kfree(r);
}

/*
 * The device's rq_tail is not ours: the rings were reset (admin RESET, a new
 * device server) or the device is hostile. With nothing in flight we follow
 * the device's indices; otherwise the requests it forgot are kept for good
 * and guest I/O stops (io_broken). Called with io_lock and hw_lock held.
 */
static bool wio_check_ring_locked(struct wdfhil_dev *wdev)
{
	u32 tail;

	if (wdev->io_broken)
		return false;
	tail = ioread32(wdev->hdr + WH_HDR_RQ_TAIL);
	if (tail == wdev->rq_tail)
		return true;
	if (list_empty(&wdev->io_requests)) {
		wdev->rq_tail = tail;
		wdev->rcq_head = ioread32(wdev->hdr + WH_HDR_RCQ_HEAD);
		return true;
	}
	dev_err(&wdev->pdev->dev,
		"request ring reset by the device: %lld request(s) in flight are kept (leaked), no more guest I/O\n",
		(long long)atomic64_read(&wdev->io_in_flight));
	wdev->io_broken = true;
	return false;
}

static bool wio_ring_has_room(struct wdfhil_dev *wdev)
{
	return (u32)(wdev->rq_tail - ioread32(wdev->hdr + WH_HDR_RQ_HEAD)) < WH_RING_ENTRIES;
}

/*
 * Puts e in the request ring and rings VECTOR_REQUEST; r (if any) goes on
 * io_requests in the same step, so its completion always finds it.
 * interruptible: a signal while waiting for room gives -ERESTARTSYS (nothing posted);
 * otherwise it waits up to WIO_POST_TIMEOUT_MS.
 */
static int wio_post(struct wdfhil_dev *wdev, struct wh_rqe *e, struct wio_request *r,
		    bool interruptible)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(WIO_POST_TIMEOUT_MS);
	int ret;

	for (;;) {
		down_read(&wdev->hw_lock);
		if (wdev->dead) {
			up_read(&wdev->hw_lock);
			return -ENODEV;
		}
		spin_lock(&wdev->io_lock);
		if (!wio_check_ring_locked(wdev)) {
			spin_unlock(&wdev->io_lock);
			up_read(&wdev->hw_lock);
			return -EIO;
		}
		if (wio_ring_has_room(wdev)) {
			void __iomem *slot = wdev->hdr + WH_RQ_OFFSET +
				(wdev->rq_tail % WH_RING_ENTRIES) * WH_RQE_SIZE;

			memcpy_toio(slot, e, sizeof(*e));
			wmb();	/* the entry before the index that publishes it */
			wdev->rq_tail++;
			iowrite32(wdev->rq_tail, wdev->hdr + WH_HDR_RQ_TAIL);
			if (r) {
				list_add_tail(&r->node, &wdev->io_requests);
				atomic64_inc(&wdev->io_in_flight);
			}
			atomic64_inc(&wdev->io_submitted);
			spin_unlock(&wdev->io_lock);
			ret = wdfhil_doorbell(wdev, WH_VECTOR_REQUEST);
			up_read(&wdev->hw_lock);
			/* r is posted: even if the doorbell failed it must wait for its completion. */
			return r ? 0 : ret;
		}
		spin_unlock(&wdev->io_lock);
		up_read(&wdev->hw_lock);
		/* The device takes entries at each doorbell unless its completion ring is
		 * full; io_work rings again after taking completions and wakes io_wq. Look
		 * again then or soon (BAR2 is only read above, under hw_lock). */
		if (interruptible) {
			ret = wait_event_interruptible_timeout(wdev->io_wq, READ_ONCE(wdev->dead), HZ / 50);
			if (ret < 0)
				return -ERESTARTSYS;
		} else {
			if (time_after(jiffies, deadline))
				return -ETIMEDOUT;
			wait_event_timeout(wdev->io_wq, READ_ONCE(wdev->dead), HZ / 50);
		}
	}
}

static void wio_send_cancel(struct wdfhil_dev *wdev, struct wio_request *r, u64 file_id)
{
	struct wh_rqe e = {
		.request_id = atomic64_inc_return(&wdev->io_next_id),
		.file_id = file_id,
		.major = WH_IO_CANCEL,
		.target_id = r->id,
	};

	spin_lock(&wdev->io_lock);
	if (r->done || r->cancel_sent) {
		spin_unlock(&wdev->io_lock);
		return;
	}
	r->cancel_sent = true;
	spin_unlock(&wdev->io_lock);
	if (wio_post(wdev, &e, NULL, false) == 0)
		atomic64_inc(&wdev->io_cancels);
}

/* Takes every completion the device posted; frees orphans; wakes waiters. */
static void wio_work(struct work_struct *work)
{
	struct wdfhil_dev *wdev = container_of(work, struct wdfhil_dev, io_work);
	struct wio_request *r, *tmp;
	LIST_HEAD(finished);
	bool pending = false;
	u32 tail;

	down_read(&wdev->hw_lock);
	if (wdev->dead) {
		up_read(&wdev->hw_lock);
		return;
	}
	spin_lock(&wdev->io_lock);
	tail = ioread32(wdev->hdr + WH_HDR_RCQ_TAIL);
	if ((u32)(tail - wdev->rcq_head) > WH_RING_ENTRIES) {
		dev_err_ratelimited(&wdev->pdev->dev, "rcq_tail %u is not within a ring of rcq_head %u: ignored\n",
				    tail, wdev->rcq_head);
		tail = wdev->rcq_head;
	}
	while (wdev->rcq_head != tail) {
		struct wh_rcqe c;
		bool found = false;

		memcpy_fromio(&c, wdev->hdr + WH_RCQ_OFFSET +
			      (wdev->rcq_head % WH_RING_ENTRIES) * WH_RCQE_SIZE, sizeof(c));
		wdev->rcq_head++;
		list_for_each_entry(r, &wdev->io_requests, node) {
			if (r->id == c.request_id) {
				found = true;
				break;
			}
		}
		if (!found) {
			atomic64_inc(&wdev->io_stray);
			continue;
		}
		list_del_init(&r->node);
		r->status = c.status;
		r->information = c.information;
		r->done = true;
		atomic64_dec(&wdev->io_in_flight);
		atomic64_inc(&wdev->io_completed);
		if (r->orphan) {
			atomic64_dec(&wdev->io_orphans);
			list_add_tail(&r->node, &finished);
		}
	}
	iowrite32(wdev->rcq_head, wdev->hdr + WH_HDR_RCQ_HEAD);
	pending = !wdev->io_broken && ioread32(wdev->hdr + WH_HDR_RQ_HEAD) != wdev->rq_tail;
	spin_unlock(&wdev->io_lock);
	/* The device may have stopped taking entries while our completion ring was full. */
	if (pending)
		wdfhil_doorbell(wdev, WH_VECTOR_REQUEST);
	up_read(&wdev->hw_lock);
	wake_up_all(&wdev->io_wq);
	list_for_each_entry_safe(r, tmp, &finished, node)
		wio_free_request(r);
}

/* The device's io_type (BUFFERED or DIRECT), or -ENODEV once it is gone. */
static int wio_io_type(struct wdfhil_dev *wdev)
{
	int type = -ENODEV;

	down_read(&wdev->hw_lock);
	if (!wdev->dead)
		type = ioread32(wdev->hdr + WH_HDR_IO_TYPE) == WH_IOTYPE_BUFFERED ?
			WH_IOTYPE_BUFFERED : WH_IOTYPE_DIRECT;
	up_read(&wdev->hw_lock);
	return type;
}

static u32 wio_max_length(struct wdfhil_dev *wdev)
{
	return wio_io_type(wdev) == WH_IOTYPE_BUFFERED ? WH_IO_MAX_SYSTEM_BUFFER : WH_IO_MAX_LENGTH;
}

struct wio_args {
	u16 major;
	u32 code;
	void __user *in;
	u32 in_len;
	void __user *out;
	u32 out_len;
	u64 offset;
	bool nonblock;
};

static int wio_pin(struct wio_request *r, struct wh_rqe *e, void __user *buf, u32 len,
		   bool device_writes)
{
	unsigned long addr = (unsigned long)buf;
	unsigned int offset = addr & ~PAGE_MASK;
	unsigned int n = DIV_ROUND_UP(offset + (unsigned long)len, PAGE_SIZE), i;
	int pinned;

	if (len > WH_IO_MAX_LENGTH)
		return -EINVAL;
	r->pages = kvmalloc_array(n, sizeof(*r->pages), GFP_KERNEL);
	if (!r->pages)
		return -ENOMEM;
	pinned = pin_user_pages_fast(addr & PAGE_MASK, n, device_writes ? FOLL_WRITE : 0, r->pages);
	if (pinned != n) {
		if (pinned > 0)
			unpin_user_pages(r->pages, pinned);
		kvfree(r->pages);
		r->pages = NULL;
		return pinned < 0 ? pinned : -EFAULT;
	}
	r->npages = n;
	r->pages_written = device_writes;
	atomic64_add(n, &r->wdev->io_pinned_pages);
	e->page_offset = offset;
	e->page_length = len;
	e->page_count = n;
	e->user_address = addr;		/* what the MDL's virtual address shows */
	if (n <= WH_IO_INLINE_PFNS) {
		for (i = 0; i < n; i++)
			e->pfn[i] = page_to_pfn(r->pages[i]);
		return 0;
	}
	/* Beyond the entry: a table in guest kernel memory (physically contiguous). */
	r->table = kmalloc_array(n, sizeof(u64), GFP_KERNEL | __GFP_NOWARN);
	if (!r->table)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		r->table[i] = page_to_pfn(r->pages[i]);
	e->flags |= WH_IOF_INDIRECT;
	e->table_gpa = virt_to_phys(r->table);
	return 0;
}

/*
 * The system buffer: zeroed (the host may report more output than it wrote),
 * physically contiguous, the caller's input copied in. With same_offset (the
 * input of a METHOD_NEITHER IOCTL) the data starts at the caller's offset in
 * its page, so the host can show it as the caller's locked input pages
 * (docs/device-abi.md); it is copied back to the caller at completion.
 */
static int wio_system_buffer(struct wio_request *r, struct wh_rqe *e, size_t len,
			     const void __user *in, u32 in_len, bool same_offset)
{
	size_t offset = same_offset ? offset_in_page(in) : 0;

	if (len > WH_IO_MAX_SYSTEM_BUFFER)
		return -EINVAL;
	r->sysbuf = kzalloc(same_offset ? len + offset + PAGE_SIZE : len, GFP_KERNEL | __GFP_NOWARN);
	if (!r->sysbuf)
		return -ENOMEM;
	r->sysdata = same_offset ? PTR_ALIGN(r->sysbuf, PAGE_SIZE) + offset : r->sysbuf;
	r->syslen = len;
	if (in_len && copy_from_user(r->sysdata, in, in_len))
		return -EFAULT;
	e->system_gpa = virt_to_phys(r->sysdata);
	e->system_length = len;
	return 0;
}

/*
 * One request, start to end: buffers, post, wait, copy out, free. 0 with
 * status and information once the host completed it; -errno if it never got
 * there (-EINTR: killed while the host still had it; it lives on as an orphan).
 */
static int wio_issue(struct wio_file *wf, const struct wio_args *a, u32 *status, u64 *information)
{
	struct wdfhil_dev *wdev = wf->wdev;
	struct wh_rqe e = { .file_id = wf->file_id, .major = a->major };
	struct wio_request *r;
	bool copy_out = false, neither_in = false;
	u64 info;
	int ret;

	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	r->wdev = wdev;
	r->major = a->major;
	INIT_LIST_HEAD(&r->node);
	/* A slot per read/write/ioctl; CREATE (like CLEANUP/CLOSE) needs none, so
	 * open() works while every slot is taken. */
	if (a->major != WH_IO_CREATE) {
		if (a->nonblock) {
			if (down_trylock(&wdev->io_slots)) {
				kfree(r);
				return -EAGAIN;
			}
		} else if (down_interruptible(&wdev->io_slots)) {
			kfree(r);
			return -ERESTARTSYS;
		}
		r->slot = true;
		atomic_inc(&wdev->io_active);
	}

	switch (a->major) {
	case WH_IO_READ:
	case WH_IO_WRITE: {
		bool read = a->major == WH_IO_READ;
		u32 len = read ? a->out_len : a->in_len;

		e.file_offset = a->offset;
		if (read)
			e.output_length = len;
		else
			e.input_length = len;
		if (!len)
			break;
		ret = wio_io_type(wdev);
		if (ret < 0)
			goto out_free;
		if (ret == WH_IOTYPE_BUFFERED) {
			ret = wio_system_buffer(r, &e, len, read ? NULL : a->in, read ? 0 : len, false);
			copy_out = read;
		} else {
			ret = wio_pin(r, &e, read ? a->out : a->in, len, read);
		}
		if (ret)
			goto out_free;
		break;
	}
	case WH_IO_DEVICE_CONTROL:
	case WH_IO_INTERNAL_DEVICE_CONTROL: {
		u32 method = a->code & 3;

		e.ioctl_code = a->code;
		e.input_length = a->in_len;
		e.output_length = a->out_len;
		if (method == WH_METHOD_BUFFERED) {
			size_t len = max(a->in_len, a->out_len);

			if (len) {
				ret = wio_system_buffer(r, &e, len, a->in, a->in_len, false);
				if (ret)
					goto out_free;
			}
			copy_out = true;
			break;
		}
		if (a->in_len) {
			ret = wio_system_buffer(r, &e, a->in_len, a->in, a->in_len,
						method == WH_METHOD_NEITHER);
			if (ret)
				goto out_free;
		}
		if (a->out_len) {
			ret = wio_pin(r, &e, a->out, a->out_len, method != WH_METHOD_IN_DIRECT);
			if (ret)
				goto out_free;
		}
		if (method == WH_METHOD_NEITHER) {
			e.user_input = (u64)(unsigned long)a->in;
			neither_in = a->in_len && a->major == WH_IO_DEVICE_CONTROL;
		}
		break;
	}
	case WH_IO_CREATE:
		break;
	default:
		ret = -EINVAL;
		goto out_free;
	}

	r->id = atomic64_inc_return(&wdev->io_next_id);
	e.request_id = r->id;
	ret = wio_post(wdev, &e, r, true);
	if (ret)
		goto out_free;

	ret = wait_event_interruptible(wdev->io_wq, READ_ONCE(r->done) || READ_ONCE(wdev->dead));
	if (ret) {
		/* A signal: ask the host to cancel, and wait for the completion anyway. */
		wio_send_cancel(wdev, r, wf->file_id);
		ret = wait_event_killable(wdev->io_wq, READ_ONCE(r->done) || READ_ONCE(wdev->dead));
	}
	spin_lock(&wdev->io_lock);
	if (!r->done) {
		if (wdev->dead) {
			/* Never freed: the host may still hold it (see above). */
			atomic64_inc(&wdev->io_leaked);
			spin_unlock(&wdev->io_lock);
			return -ENODEV;
		}
		/* Killed: io_work frees it when the host completes it. */
		r->orphan = true;
		atomic64_inc(&wdev->io_orphans);
		spin_unlock(&wdev->io_lock);
		return -EINTR;
	}
	spin_unlock(&wdev->io_lock);

	*status = r->status;
	info = r->information;
	ret = 0;
	if (copy_out && r->sysbuf && info) {
		size_t n = min_t(u64, info, a->out_len);

		if (n && copy_to_user(a->out, r->sysdata, n))
			ret = -EFAULT;
	}
	/* METHOD_NEITHER: the driver may have written the caller's input in place. */
	if (neither_in && copy_to_user(a->in, r->sysdata, a->in_len))
		ret = -EFAULT;
	*information = info;
out_free:
	wio_free_request(r);
	return ret;
}

/* CLEANUP and CLOSE at release: nobody waits, io_work frees them. */
static void wio_post_orphan(struct wio_file *wf, u16 major)
{
	struct wdfhil_dev *wdev = wf->wdev;
	struct wh_rqe e = { .file_id = wf->file_id, .major = major };
	struct wio_request *r = kzalloc(sizeof(*r), GFP_KERNEL | __GFP_NOFAIL);

	r->wdev = wdev;
	r->major = major;
	r->orphan = true;
	INIT_LIST_HEAD(&r->node);
	r->id = atomic64_inc_return(&wdev->io_next_id);
	e.request_id = r->id;
	atomic64_inc(&wdev->io_orphans);
	if (wio_post(wdev, &e, r, false)) {
		atomic64_dec(&wdev->io_orphans);
		kfree(r);
	}
}

static int wio_result(u32 status, u64 information, size_t limit)
{
	int err = wh_ntstatus_errno(status);

	if (err == WH_ERRNO_EOF)
		return 0;
	if (err)
		return -err;
	return (int)min_t(u64, information, limit);
}

static int wio_open(struct inode *inode, struct file *filp)
{
	struct wdfhil_dev *wdev = container_of(inode->i_cdev, struct wdfhil_dev, io_cdev);
	struct wio_args a = { .major = WH_IO_CREATE };
	struct wio_file *wf;
	u64 information;
	u32 status;
	int ret;

	wf = kzalloc(sizeof(*wf), GFP_KERNEL);
	if (!wf)
		return -ENOMEM;
	down_read(&wdev->hw_lock);
	ret = wdev->dead ? -ENODEV : 0;
	if (!ret && !(ioread32(wdev->hdr + WH_HDR_FEATURES) & WH_FEATURE_REQUEST_RING))
		ret = -EOPNOTSUPP;	/* no host endpoint serves the request ring */
	if (!ret)
		get_device(&wdev->dev);
	up_read(&wdev->hw_lock);
	if (ret) {
		kfree(wf);
		return ret;
	}
	wf->wdev = wdev;
	wf->file_id = atomic64_inc_return(&wdev->io_next_file);
	a.nonblock = filp->f_flags & O_NONBLOCK;
	ret = wio_issue(wf, &a, &status, &information);
	if (!ret && wh_ntstatus_errno(status))
		ret = wh_ntstatus_errno(status) == WH_ERRNO_EOF ? -EIO : -wh_ntstatus_errno(status);
	if (ret) {
		put_device(&wdev->dev);
		kfree(wf);
		return ret == -ERESTARTSYS ? -EINTR : ret;
	}
	filp->private_data = wf;
	return 0;
}

static int wio_release(struct inode *inode, struct file *filp)
{
	struct wio_file *wf = filp->private_data;
	struct wdfhil_dev *wdev = wf->wdev;

	wio_post_orphan(wf, WH_IO_CLEANUP);
	wio_post_orphan(wf, WH_IO_CLOSE);
	kfree(wf);
	put_device(&wdev->dev);
	return 0;
}

/* read and write: one request of at most what the ABI allows (a short transfer is
 * allowed), *ppos moved by what the host reports done. *len is a's in_len or out_len. */
static ssize_t wio_transfer(struct file *filp, struct wio_args *a, u32 *len, size_t count,
			    loff_t *ppos)
{
	struct wio_file *wf = filp->private_data;
	u64 information;
	u32 status;
	int ret;

	*len = min_t(size_t, count, wio_max_length(wf->wdev));
	ret = wio_issue(wf, a, &status, &information);
	if (ret)
		return ret;
	ret = wio_result(status, information, *len);
	if (ret > 0)
		*ppos += ret;
	return ret;
}

static ssize_t wio_read(struct file *filp, char __user *buf, size_t count, loff_t *ppos)
{
	struct wio_args a = { .major = WH_IO_READ, .out = buf, .offset = *ppos,
			      .nonblock = filp->f_flags & O_NONBLOCK };

	return wio_transfer(filp, &a, &a.out_len, count, ppos);
}

static ssize_t wio_write(struct file *filp, const char __user *buf, size_t count, loff_t *ppos)
{
	struct wio_args a = { .major = WH_IO_WRITE, .in = (void __user *)buf, .offset = *ppos,
			      .nonblock = filp->f_flags & O_NONBLOCK };

	return wio_transfer(filp, &a, &a.in_len, count, ppos);
}

static long wio_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct wio_file *wf = filp->private_data;
	struct wh_io_call call;
	struct wio_args a = { .nonblock = filp->f_flags & O_NONBLOCK };
	u64 information = 0;
	u32 status = 0;
	int ret, err;

	if (cmd != WH_IOC_CALL)
		return -ENOTTY;
	if (copy_from_user(&call, (void __user *)arg, sizeof(call)))
		return -EFAULT;
	if (call.major != WH_IO_READ && call.major != WH_IO_WRITE &&
	    call.major != WH_IO_DEVICE_CONTROL && call.major != WH_IO_INTERNAL_DEVICE_CONTROL)
		return -EINVAL;
	if (call.flags & ~WH_IO_CALL_ERRNO)
		return -EINVAL;
	a.major = call.major;
	a.code = call.ioctl_code;
	a.in = u64_to_user_ptr(call.input);
	a.in_len = call.input_length;
	a.out = u64_to_user_ptr(call.output);
	a.out_len = call.output_length;
	a.offset = call.file_offset;
	if ((a.major == WH_IO_READ && a.in_len) || (a.major == WH_IO_WRITE && a.out_len))
		return -EINVAL;
	ret = wio_issue(wf, &a, &status, &information);
	if (ret)
		return ret;
	call.status = status;
	call.information = information;
	if (copy_to_user((void __user *)arg, &call, sizeof(call)))
		return -EFAULT;
	if (call.flags & WH_IO_CALL_ERRNO) {
		err = wh_ntstatus_errno(status);
		if (err > 0)
			return -err;
	}
	return 0;
}

static __poll_t wio_poll(struct file *filp, struct poll_table_struct *wait)
{
	struct wio_file *wf = filp->private_data;
	struct wdfhil_dev *wdev = wf->wdev;

	poll_wait(filp, &wdev->io_wq, wait);
	if (READ_ONCE(wdev->dead))
		return EPOLLHUP | EPOLLERR;
	/* Ready when a request could start without waiting for a free slot. */
	if (atomic_read(&wdev->io_active) < WH_RING_ENTRIES)
		return EPOLLIN | EPOLLRDNORM | EPOLLOUT | EPOLLWRNORM;
	return 0;
}

static const struct file_operations wio_fops = {
	.owner = THIS_MODULE,
	.open = wio_open,
	.release = wio_release,
	.read = wio_read,
	.write = wio_write,
	.unlocked_ioctl = wio_ioctl,
	.compat_ioctl = wio_ioctl,
	.poll = wio_poll,
	.llseek = default_llseek,
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

/* Guest I/O counters (tests read them: io_pinned_pages must drop to 0, ...). */
#define WIO_COUNTER(name)								\
static ssize_t name##_show(struct device *dev, struct device_attribute *attr, char *buf)	\
{											\
	struct wdfhil_dev *wdev = container_of(dev, struct wdfhil_dev, dev);		\
											\
	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&wdev->name));	\
}											\
static DEVICE_ATTR_RO(name)
WIO_COUNTER(io_pinned_pages);
WIO_COUNTER(io_in_flight);
WIO_COUNTER(io_orphans);
WIO_COUNTER(io_submitted);
WIO_COUNTER(io_completed);
WIO_COUNTER(io_cancels);
WIO_COUNTER(io_stray);
WIO_COUNTER(io_leaked);

static struct attribute *wdfhil_attrs[] = {
	&dev_attr_interrupts.attr,
	&dev_attr_vectors.attr,
	&dev_attr_io_pinned_pages.attr,
	&dev_attr_io_in_flight.attr,
	&dev_attr_io_orphans.attr,
	&dev_attr_io_submitted.attr,
	&dev_attr_io_completed.attr,
	&dev_attr_io_cancels.attr,
	&dev_attr_io_stray.attr,
	&dev_attr_io_leaked.attr,
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
	spin_lock_init(&wdev->io_lock);
	INIT_LIST_HEAD(&wdev->io_requests);
	INIT_WORK(&wdev->io_work, wio_work);
	init_waitqueue_head(&wdev->io_wq);
	sema_init(&wdev->io_slots, WH_RING_ENTRIES);
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
	/* Header and the request rings (the DMA rings are the agent's, through mmap). */
	wdev->hdr = pci_iomap_range(pdev, 2, 0, WDFHIL_BAR2_MIN);
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
	if (wdev->nvec > WH_VECTOR_IO_COMPLETION) {
		dev_t io_devt = MKDEV(MAJOR(wdfhil_devt), WDFHIL_MAX_DEVICES + wdev->minor);

		/* The node keeps the device structure alive while open (like cdev_device_add). */
		wdev->rq_tail = ioread32(wdev->hdr + WH_HDR_RQ_TAIL);
		wdev->rcq_head = ioread32(wdev->hdr + WH_HDR_RCQ_HEAD);
		cdev_init(&wdev->io_cdev, &wio_fops);
		wdev->io_cdev.owner = THIS_MODULE;
		cdev_set_parent(&wdev->io_cdev, &wdev->dev.kobj);
		ret = cdev_add(&wdev->io_cdev, io_devt, 1);
		if (!ret) {
			wdev->io_device = device_create(wdfio_class, &pdev->dev, io_devt, wdev,
							"wdfio%d", wdev->minor);
			if (IS_ERR(wdev->io_device)) {
				ret = PTR_ERR(wdev->io_device);
				wdev->io_device = NULL;
				cdev_del(&wdev->io_cdev);
			}
		}
		if (ret)
			dev_warn(&pdev->dev, "no /dev/wdfio%d (%d): guest I/O unavailable\n", wdev->minor, ret);
		else
			wdev->io_enabled = true;
	} else {
		dev_warn(&pdev->dev, "only %d MSI-X vector(s): no guest I/O node\n", wdev->nvec);
	}
	dev_info(&pdev->dev, "wdfhil%d: ABI %u, BAR2 %pR, device peer %u, %d MSI-X vector(s)\n",
		 wdev->minor, WH_ABI_VERSION, &pdev->resource[2],
		 ioread32(wdev->hdr + WH_HDR_DEVICE_PEER), wdev->nvec);
	/*
	 * The nodes exist: say so in BAR2, so the host learns it without a command in
	 * the guest (a hot-plug waits for this). No doorbell: the host reads it in its
	 * mapping, and a re-plugged device must not be rung before the host checked it.
	 */
	iowrite32(wdev->minor + 1, wdev->hdr + WH_HDR_DRIVER_MINOR);
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

	struct wio_request *r;

	iowrite32(0, wdev->hdr + WH_HDR_DRIVER_MINOR);	/* the nodes are going */
	cdev_device_del(&wdev->cdev, &wdev->dev);
	if (wdev->io_enabled) {
		device_destroy(wdfio_class, wdev->io_cdev.dev);
		cdev_del(&wdev->io_cdev);
	}
	down_write(&wdev->hw_lock);
	WRITE_ONCE(wdev->dead, true);
	up_write(&wdev->hw_lock);
	wake_up_all(&wdev->io_wq);
	/* BAR2 is about to vanish: later touches of an old mapping get SIGBUS. */
	mutex_lock(&wdev->files_lock);
	list_for_each_entry(wf, &wdev->files, node)
		unmap_mapping_range(wf->filp->f_mapping, 0, 0, 1);
	mutex_unlock(&wdev->files_lock);
	wake_up_interruptible_all(&wdev->wq);
	for (i = 0; i < wdev->nvec; i++)
		free_irq(pci_irq_vector(pdev, i), wdev);
	cancel_work_sync(&wdev->io_work);
	/* Requests the host still has are never freed (their pages stay pinned). */
	spin_lock(&wdev->io_lock);
	list_for_each_entry(r, &wdev->io_requests, node)
		if (r->orphan)
			atomic64_inc(&wdev->io_leaked);
	spin_unlock(&wdev->io_lock);
	if (atomic64_read(&wdev->io_in_flight))
		dev_warn(&pdev->dev, "removed with %lld guest I/O request(s) in flight: kept pinned\n",
			 (long long)atomic64_read(&wdev->io_in_flight));
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

	ret = alloc_chrdev_region(&wdfhil_devt, 0, 2 * WDFHIL_MAX_DEVICES, "wdfhil");
	if (ret)
		return ret;
	wdfhil_class = class_create(THIS_MODULE, "wdfhil");
	if (IS_ERR(wdfhil_class)) {
		ret = PTR_ERR(wdfhil_class);
		goto err_chrdev;
	}
	wdfio_class = class_create(THIS_MODULE, "wdfio");
	if (IS_ERR(wdfio_class)) {
		ret = PTR_ERR(wdfio_class);
		goto err_class;
	}
	ret = pci_register_driver(&wdfhil_driver);
	if (ret)
		goto err_io_class;
	pr_info(WDFHIL_NAME ": loaded, device ABI %u\n", WH_ABI_VERSION);
	return 0;

err_io_class:
	class_destroy(wdfio_class);
err_class:
	class_destroy(wdfhil_class);
err_chrdev:
	unregister_chrdev_region(wdfhil_devt, 2 * WDFHIL_MAX_DEVICES);
	return ret;
}

static void __exit wdfhil_exit(void)
{
	pci_unregister_driver(&wdfhil_driver);
	class_destroy(wdfio_class);
	class_destroy(wdfhil_class);
	unregister_chrdev_region(wdfhil_devt, 2 * WDFHIL_MAX_DEVICES);
	ida_destroy(&wdfhil_ida);
}

module_init(wdfhil_init);
module_exit(wdfhil_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("wdfhil ivshmem-doorbell device driver");
