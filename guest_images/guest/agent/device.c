/*
 * The device as the agent sees it: BAR2 mapped through /dev/wdfhilN (header,
 * submission and completion rings), the doorbell (write of a vector) and the
 * completion interrupt (blocking read/poll), all from the kernel module.
 *
 * BAR2 is shared with the Python device on the host, so every access to it
 * is volatile and the ring indices are published with release stores and
 * read with acquire loads. Ring indices are read from BAR2 at every
 * submission (under an flock of the device file), so several agent
 * processes can take turns on one device. Interrupts can merge: the agent
 * always looks at cq_tail and only blocks when it has nothing new.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include "agent.h"

#define RING_MASK (WH_RING_ENTRIES - 1u)
#define BAR2_RINGS_END (WH_CQ_OFFSET + WH_RING_ENTRIES * WH_CQE_SIZE)
#define TABLE_SEGMENTS (AGENT_PAGE_SIZE / WH_SEGMENT_SIZE)
#define TABLE_BUFFER "__indirect_table"
#define WAIT_SLICE_MS 20

static int dev_fd = -1;
static const char *default_path = "/dev/wdfhil0";
static char dev_path[128];
static volatile uint8_t *bar2;
static size_t bar2_len;
static uint64_t request_counter;
static uint64_t stray_completions;

double monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static volatile uint32_t *hdr32(uint32_t offset)
{
	return (volatile uint32_t *)(bar2 + WH_HEADER_OFFSET + offset);
}

uint32_t header_read32(uint32_t offset)
{
	return __atomic_load_n(hdr32(offset), __ATOMIC_ACQUIRE);
}

uint64_t header_read64(uint32_t offset)
{
	const volatile uint32_t *p = hdr32(offset);

	return (uint64_t)p[0] | ((uint64_t)p[1] << 32);
}

static void header_write32(uint32_t offset, uint32_t value)
{
	__atomic_store_n(hdr32(offset), value, __ATOMIC_RELEASE);
}

const char *opcode_name(uint32_t opcode)
{
	switch (opcode) {
	case WH_OP_NOP: return "NOP";
	case WH_OP_WRITE: return "WRITE";
	case WH_OP_READ: return "READ";
	default: return "UNKNOWN";
	}
}

const char *device_status_name(uint32_t status)
{
	switch (status) {
	case WH_STATUS_RESETTING: return "RESETTING";
	case WH_STATUS_READY: return "READY";
	case WH_STATUS_FAILED: return "FAILED";
	case WH_STATUS_NO_GUEST_RAM: return "NO_GUEST_RAM";
	default: return "UNKNOWN";
	}
}

const char *cq_status_name(uint32_t status)
{
	switch (status) {
	case WH_CQ_OK: return "OK";
	case WH_CQ_SHORT: return "SHORT";
	case WH_CQ_ERROR: return "ERROR";
	default: return "UNKNOWN";
	}
}

const char *error_reason_name(uint32_t reason)
{
	switch (reason) {
	case WH_ERR_NONE: return "NONE";
	case WH_ERR_BAD_OPCODE: return "BAD_OPCODE";
	case WH_ERR_BAD_FLAGS: return "BAD_FLAGS";
	case WH_ERR_BAD_SEGMENT_COUNT: return "BAD_SEGMENT_COUNT";
	case WH_ERR_LENGTH_MISMATCH: return "LENGTH_MISMATCH";
	case WH_ERR_TRANSFER_TOO_LARGE: return "TRANSFER_TOO_LARGE";
	case WH_ERR_DEVICE_RANGE: return "DEVICE_RANGE";
	case WH_ERR_SEGMENT_NOT_IN_RAM: return "SEGMENT_NOT_IN_RAM";
	case WH_ERR_SEGMENT_ABOVE_DMA_MASK: return "SEGMENT_ABOVE_DMA_MASK";
	case WH_ERR_INDIRECT_TABLE: return "INDIRECT_TABLE";
	case WH_ERR_ZERO_SEGMENT: return "ZERO_SEGMENT";
	case WH_ERR_RING_INDEX: return "RING_INDEX";
	case WH_ERR_SEGMENT_ALIGNMENT: return "SEGMENT_ALIGNMENT";
	case WH_ERR_DEVICE_NOT_READY: return "DEVICE_NOT_READY";
	case WH_ERR_RESERVED_FIELD: return "RESERVED_FIELD";
	case WH_ERR_INTERNAL: return "INTERNAL";
	default: return "UNKNOWN";
	}
}

/* /dev/wdfhilN may be missing when no devtmpfs is mounted: make it from sysfs. */
static int make_node(const char *path)
{
	const char *base = strrchr(path, '/');
	char sys[256], text[32];
	unsigned int major, minor;
	FILE *f;

	base = base ? base + 1 : path;
	snprintf(sys, sizeof(sys), "/sys/class/wdfhil/%s/dev", base);
	f = fopen(sys, "r");
	if (!f)
		return fail("%s does not exist and %s is missing: is wdfhil_pci.ko loaded and the device "
			    "present (see dmesg)?", path, sys);
	if (!fgets(text, sizeof(text), f) || sscanf(text, "%u:%u", &major, &minor) != 2) {
		fclose(f);
		return fail("cannot parse %s", sys);
	}
	fclose(f);
	if (mknod(path, S_IFCHR | 0600, makedev(major, minor)) && errno != EEXIST)
		return fail("mknod %s: %s", path, strerror(errno));
	return 0;
}

static int check_header(void)
{
	struct { uint32_t field, expected; const char *name; } want[] = {
		{ WH_HDR_MAGIC, WH_MAGIC, "magic" },
		{ WH_HDR_ABI_VERSION, WH_ABI_VERSION, "abi_version" },
		{ WH_HDR_RING_ENTRIES, WH_RING_ENTRIES, "ring_entries" },
		{ WH_HDR_SQ_OFFSET, WH_SQ_OFFSET, "sq_offset" },
		{ WH_HDR_CQ_OFFSET, WH_CQ_OFFSET, "cq_offset" },
	};

	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		uint32_t got = header_read32(want[i].field);

		if (got != want[i].expected)
			return fail("device header %s is 0x%x, the agent's ABI says 0x%x", want[i].name,
				    got, want[i].expected);
	}
	return 0;
}

void device_set_default(const char *path)
{
	default_path = path;
}

int device_open(const char *path)
{
	void *map;

	if (dev_fd >= 0) {
		struct pollfd p = { .fd = dev_fd, .events = POLLIN };

		if (path && strcmp(path, dev_path) != 0)
			return fail("device %s already open (one device per agent process)", dev_path);
		/* After a hot-unplug BAR2 is gone from our mapping: never touch it again. */
		if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR))) {
			device_close();
			return fail("%s is gone (hot-unplugged); open it again once a device is back",
				    dev_path);
		}
		return 0;
	}
	if (!path)
		path = default_path;
	snprintf(dev_path, sizeof(dev_path), "%s", path);
	if (access(path, F_OK) && make_node(path))
		return -1;
	dev_fd = open(path, O_RDWR | O_CLOEXEC);
	if (dev_fd < 0)
		return fail("open %s: %s", path, strerror(errno));
	bar2_len = WH_BAR2_SIZE;
	map = mmap(NULL, bar2_len, PROT_READ | PROT_WRITE, MAP_SHARED, dev_fd, 0);
	if (map == MAP_FAILED) {
		/* A smaller BAR2 still has header and rings; the data area is then not mapped. */
		bar2_len = BAR2_RINGS_END;
		map = mmap(NULL, bar2_len, PROT_READ | PROT_WRITE, MAP_SHARED, dev_fd, 0);
	}
	if (map == MAP_FAILED) {
		int err = errno;

		close(dev_fd);
		dev_fd = -1;
		return fail("mmap BAR2 of %s: %s", path, strerror(err));
	}
	bar2 = map;
	if (check_header()) {
		device_close();
		return -1;
	}
	request_counter = (uint64_t)getpid() << 32;
	return 0;
}

void device_close(void)
{
	if (bar2)
		munmap((void *)bar2, bar2_len);
	if (dev_fd >= 0)
		close(dev_fd);
	bar2 = NULL;
	dev_fd = -1;
}

int device_is_open(void)
{
	return dev_fd >= 0;
}

const char *device_path(void)
{
	return dev_path;
}

uint64_t device_stray_completions(void)
{
	return stray_completions;
}

volatile uint8_t *device_data(uint64_t offset, uint64_t length)
{
	uint64_t data_size = header_read32(WH_HDR_DATA_SIZE);
	uint64_t data_offset = header_read32(WH_HDR_DATA_OFFSET);

	if (data_offset + data_size > bar2_len || offset > data_size || length > data_size - offset) {
		fail("device memory range 0x%llx+%llu is outside the mapped data area (%llu bytes)",
		     (unsigned long long)offset, (unsigned long long)length,
		     (unsigned long long)(data_offset + data_size > bar2_len ? 0 : data_size));
		return NULL;
	}
	return bar2 + data_offset + offset;
}

void device_report_header(struct json *j)
{
	static const struct { const char *name; uint32_t offset; int wide; } fields[] = {
		{ "magic", WH_HDR_MAGIC, 0 }, { "abi_version", WH_HDR_ABI_VERSION, 0 },
		{ "features", WH_HDR_FEATURES, 1 }, { "status", WH_HDR_STATUS, 0 },
		{ "last_error", WH_HDR_LAST_ERROR, 0 }, { "device_peer", WH_HDR_DEVICE_PEER, 0 },
		{ "ring_entries", WH_HDR_RING_ENTRIES, 0 }, { "sq_offset", WH_HDR_SQ_OFFSET, 0 },
		{ "cq_offset", WH_HDR_CQ_OFFSET, 0 }, { "data_offset", WH_HDR_DATA_OFFSET, 0 },
		{ "data_size", WH_HDR_DATA_SIZE, 0 }, { "dma_mask", WH_HDR_DMA_MASK, 1 },
		{ "max_segments", WH_HDR_MAX_SEGMENTS, 0 }, { "max_transfer", WH_HDR_MAX_TRANSFER, 0 },
		{ "sq_tail", WH_HDR_SQ_TAIL, 0 }, { "sq_head", WH_HDR_SQ_HEAD, 0 },
		{ "cq_tail", WH_HDR_CQ_TAIL, 0 }, { "cq_head", WH_HDR_CQ_HEAD, 0 },
		{ "admin_done", WH_HDR_ADMIN_DONE, 0 }, { "completions", WH_HDR_COMPLETIONS, 1 },
		{ "segment_align", WH_HDR_SEGMENT_ALIGN, 0 }, { "guest_peer", WH_HDR_GUEST_PEER, 0 },
	};

	json_kstr(j, "device", dev_path);
	json_key(j, "header");
	json_begin_object(j);
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		json_kuint(j, fields[i].name, fields[i].wide ? header_read64(fields[i].offset)
							     : header_read32(fields[i].offset));
	json_kstr(j, "status_name", device_status_name(header_read32(WH_HDR_STATUS)));
	json_kstr(j, "last_error_name", error_reason_name(header_read32(WH_HDR_LAST_ERROR)));
	json_end_object(j);
	json_kuint(j, "bar2_mapped", bar2_len);
}

static int ring(uint32_t vector)
{
	if (write(dev_fd, &vector, sizeof(vector)) != (ssize_t)sizeof(vector))
		return fail("ring doorbell vector %u on %s: %s", vector, dev_path, strerror(errno));
	return 0;
}

/*
 * Blocks until an interrupt arrived since the last wait, the deadline passed
 * (returns 1), or a slice of WAIT_SLICE_MS ended: the caller looks at the
 * ring again then, so a lost interrupt costs a slice, not the whole timeout.
 */
static int wait_interrupt(double deadline_us)
{
	struct pollfd p = { .fd = dev_fd, .events = POLLIN };
	uint64_t count;
	double left = deadline_us - monotonic_us();
	int n, slice;

	if (left <= 0)
		return 1;
	slice = (int)(left / 1000.0) + 1;
	if (slice > WAIT_SLICE_MS)
		slice = WAIT_SLICE_MS;
	n = poll(&p, 1, slice);
	if (n < 0 && errno != EINTR)
		return fail("poll %s: %s", dev_path, strerror(errno));
	if (n <= 0)
		return 0;	/* the caller checks the ring and the deadline again */
	if (p.revents & (POLLHUP | POLLERR))
		return fail("%s: the device is gone (hot-unplugged?)", dev_path);
	if (read(dev_fd, &count, sizeof(count)) < 0 && errno != EAGAIN && errno != EINTR)
		return fail("read %s: %s", dev_path, strerror(errno));
	return 0;
}

static int timeout_error(const char *what, int timeout_ms)
{
	return fail("%s: no answer from the device within %d ms (status %u, sq_tail %u, sq_head %u, "
		    "cq_tail %u, cq_head %u, last_error %s)", what, timeout_ms,
		    header_read32(WH_HDR_STATUS), header_read32(WH_HDR_SQ_TAIL),
		    header_read32(WH_HDR_SQ_HEAD), header_read32(WH_HDR_CQ_TAIL),
		    header_read32(WH_HDR_CQ_HEAD),
		    error_reason_name(header_read32(WH_HDR_LAST_ERROR)));
}

static void read_cqe(uint32_t index, struct wh_cqe *cqe)
{
	const volatile uint64_t *src =
		(const volatile uint64_t *)(bar2 + WH_CQ_OFFSET + (index & RING_MASK) * WH_CQE_SIZE);
	uint64_t *dst = (uint64_t *)cqe;

	for (size_t i = 0; i < sizeof(*cqe) / 8; i++)
		dst[i] = src[i];
}

static void write_sqe(uint32_t index, const struct wh_sqe *sqe)
{
	volatile uint64_t *dst =
		(volatile uint64_t *)(bar2 + WH_SQ_OFFSET + (index & RING_MASK) * WH_SQE_SIZE);
	const uint64_t *src = (const uint64_t *)sqe;

	for (size_t i = 0; i < sizeof(*sqe) / 8; i++)
		dst[i] = src[i];
}

/* Indirect table: one locked page below 4 GiB if possible (32-bit devices read it too). */
static int indirect_table(const struct segment_list *segs, uint64_t *gpa)
{
	struct buffer *t = buffer_find(TABLE_BUFFER);

	if (!(header_read64(WH_HDR_FEATURES) & WH_FEATURE_INDIRECT))
		return fail("%u segments need an indirect table and the device lacks FEATURE_INDIRECT",
			    segs->count);
	if (segs->count > TABLE_SEGMENTS)
		return fail("%u segments: the agent's indirect table holds at most %u", segs->count,
			    (unsigned int)TABLE_SEGMENTS);
	if (!t && buffer_alloc(TABLE_BUFFER, AGENT_PAGE_SIZE, 0, PLACE_LOW, 1, &t) &&
	    buffer_alloc(TABLE_BUFFER, AGENT_PAGE_SIZE, 0, PLACE_ANY, 1, &t))
		return -1;
	memcpy(t->data, segs->seg, segs->count * sizeof(*segs->seg));
	*gpa = t->frames[0];
	return 0;
}

/*
 * Takes completions off the ring until the one for request_id shows up.
 * Returns 1 when found, 0 when not yet, -1 on a broken ring.
 */
static int reap(uint64_t request_id, struct wh_cqe *out)
{
	uint32_t tail = header_read32(WH_HDR_CQ_TAIL);
	uint32_t head = header_read32(WH_HDR_CQ_HEAD);
	int found = 0;

	if (tail - head > WH_RING_ENTRIES)
		return fail("completion ring broken: cq_tail %u is more than %u ahead of cq_head %u",
			    tail, WH_RING_ENTRIES, head);
	while (head != tail) {
		struct wh_cqe cqe;

		read_cqe(head, &cqe);
		head++;
		header_write32(WH_HDR_CQ_HEAD, head);
		if (!found && cqe.request_id == request_id) {
			*out = cqe;
			found = 1;
		} else {
			stray_completions++;
		}
	}
	return found;
}

int device_submit(const struct submit_options *o, uint16_t opcode, uint64_t device_offset,
		  uint64_t length, const struct segment_list *segs, struct completion_record *out,
		  uint32_t *used_flags)
{
	struct wh_sqe sqe;
	uint32_t tail, status;
	double start, deadline;
	int ret = -1, found = 0;

	if (flock(dev_fd, LOCK_EX))
		return fail("flock %s: %s", dev_path, strerror(errno));
	status = header_read32(WH_HDR_STATUS);
	if (status != WH_STATUS_READY) {
		fail("device status is %s (%u), not READY (last_error %s)", device_status_name(status),
		     status, error_reason_name(header_read32(WH_HDR_LAST_ERROR)));
		goto out;
	}
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = opcode;
	sqe.request_id = o->request_id ? o->request_id : ++request_counter;
	sqe.device_offset = device_offset;
	sqe.length = length;
	sqe.nseg = segs ? segs->count : 0;
	if (sqe.nseg > WH_MAX_INLINE_SEGMENTS || (o->indirect && sqe.nseg)) {
		if (indirect_table(segs, &sqe.indirect_gpa))
			goto out;
		sqe.flags = WH_DESC_INDIRECT;
	} else if (sqe.nseg) {
		memcpy(sqe.seg, segs->seg, sqe.nseg * sizeof(*segs->seg));
	}
	if (used_flags)
		*used_flags = sqe.flags;

	deadline = monotonic_us() + o->timeout_ms * 1000.0;
	tail = header_read32(WH_HDR_SQ_TAIL);
	while (tail - header_read32(WH_HDR_SQ_HEAD) >= WH_RING_ENTRIES) {
		if (monotonic_us() > deadline) {
			timeout_error("submission ring full", o->timeout_ms);
			goto out;
		}
		if (wait_interrupt(deadline) < 0)
			goto out;
	}
	write_sqe(tail, &sqe);
	/* The descriptor must be in memory before the device can see the new tail. */
	header_write32(WH_HDR_SQ_TAIL, tail + 1);
	start = monotonic_us();
	if (ring(WH_VECTOR_SUBMIT))
		goto out;
	for (;;) {
		found = reap(sqe.request_id, &out->cqe);
		if (found)
			break;
		if (monotonic_us() > deadline) {
			timeout_error("waiting for a completion", o->timeout_ms);
			goto out;
		}
		if (wait_interrupt(deadline) < 0)
			goto out;
	}
	if (found < 0)
		goto out;
	out->latency_us = monotonic_us() - start;
	ret = 0;
out:
	flock(dev_fd, LOCK_UN);
	return ret;
}

int device_reset(int timeout_ms)
{
	uint32_t before;
	double deadline = monotonic_us() + timeout_ms * 1000.0;
	int ret = -1;

	if (flock(dev_fd, LOCK_EX))
		return fail("flock %s: %s", dev_path, strerror(errno));
	before = header_read32(WH_HDR_ADMIN_DONE);
	header_write32(WH_HDR_ADMIN_CMD, WH_ADMIN_RESET);
	if (ring(WH_VECTOR_ADMIN))
		goto out;
	/* The device raises VECTOR_COMPLETION once admin_done moved. */
	while (header_read32(WH_HDR_ADMIN_DONE) == before) {
		if (monotonic_us() > deadline) {
			timeout_error("admin RESET", timeout_ms);
			goto out;
		}
		if (wait_interrupt(deadline) < 0)
			goto out;
	}
	ret = 0;
out:
	flock(dev_fd, LOCK_UN);
	return ret;
}
