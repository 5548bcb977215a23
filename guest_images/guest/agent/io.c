/*
 * Guest I/O through /dev/wdfioN (the request ring, ABI v2): what a program
 * using a Windows-style driver does, read/write/ioctl on a device node, with
 * the buffers placed as a test wants (the agent's own buffers, or per-thread
 * buffers at a chosen offset into a page) and many requests in flight from
 * several threads. A failed call is a result (errno and its name), not a
 * failure of the command.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>
#include "agent.h"

static int io_fd = -1;
static char io_path[128] = "/dev/wdfio0";

static const char *errno_name(int e)
{
	const char *name = e ? strerrorname_np(e) : "";

	return name ? name : "E?";
}

int io_open(const char *path, int nonblock)
{
	int fd;

	if (path)
		snprintf(io_path, sizeof(io_path), "%s", path);
	if (io_fd >= 0)
		close(io_fd);
	io_fd = -1;
	fd = open(io_path, O_RDWR | O_CLOEXEC | (nonblock ? O_NONBLOCK : 0));
	if (fd < 0)
		return fail("open %s: %s (%s)", io_path, strerror(errno), errno_name(errno));
	io_fd = fd;
	return 0;
}

void io_close(void)
{
	if (io_fd >= 0)
		close(io_fd);
	io_fd = -1;
}

static int need_io(void)
{
	return io_fd >= 0 ? 0 : io_open(NULL, 0);
}

const char *io_device_path(void)
{
	return io_path;
}

static void report_call(struct json *j, long result, int err)
{
	json_kint(j, "result", result);
	json_kint(j, "errno", err);
	json_kstr(j, "errno_name", errno_name(err));
}

int io_rw(int write_, struct buffer *b, uint64_t start, uint64_t len, uint64_t offset,
	  struct json *j)
{
	ssize_t n;
	double t0;

	if (need_io())
		return -1;
	t0 = monotonic_us();
	n = write_ ? pwrite(io_fd, b->data + start, len, (off_t)offset)
		   : pread(io_fd, b->data + start, len, (off_t)offset);
	json_kstr(j, "name", b->name);
	json_kuint(j, "start", start);
	json_kuint(j, "length", len);
	json_kuint(j, "offset", offset);
	report_call(j, (long)n, n < 0 ? errno : 0);
	json_kdouble(j, "latency_us", monotonic_us() - t0);
	return 0;
}

static void on_alarm(int sig)
{
	(void)sig;	/* only there to interrupt a call */
}

/* A signal (SIGALRM with a handler, no SA_RESTART) alarm_ms into the next call. */
static void arm_alarm(uint64_t alarm_ms)
{
	struct sigaction sa;
	struct itimerval t;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	memset(&t, 0, sizeof(t));
	t.it_value.tv_sec = (time_t)(alarm_ms / 1000);
	t.it_value.tv_usec = (suseconds_t)(alarm_ms % 1000) * 1000;
	setitimer(ITIMER_REAL, &t, NULL);
}

int io_call(uint32_t major, uint32_t code, void *in, uint32_t in_len, void *out,
	    uint32_t out_len, uint64_t offset, int want_errno, uint64_t alarm_ms, struct json *j)
{
	struct wh_io_call call = {
		.major = major, .ioctl_code = code,
		.input = (uint64_t)(uintptr_t)in, .output = (uint64_t)(uintptr_t)out,
		.input_length = in_len, .output_length = out_len, .file_offset = offset,
		.flags = want_errno ? WH_IO_CALL_ERRNO : 0,
	};
	int rc;

	if (need_io())
		return -1;
	if (alarm_ms)
		arm_alarm(alarm_ms);
	rc = ioctl(io_fd, WH_IOC_CALL, &call);
	report_call(j, rc, rc < 0 ? errno : 0);
	json_kbool(j, "alarm_fired", alarm_ms != 0);
	json_kuint(j, "status", call.status);
	json_kuint(j, "information", call.information);
	return 0;
}

/* IOCTL `code` with a u32 input `status`: the exact NTSTATUS back, then the errno. */
int io_status(uint32_t status, uint32_t code, struct json *j)
{
	struct wh_io_call call = {
		.major = WH_IO_DEVICE_CONTROL, .ioctl_code = code,
		.input = (uint64_t)(uintptr_t)&status, .input_length = sizeof(status),
	};
	int rc;

	if (need_io())
		return -1;
	rc = ioctl(io_fd, WH_IOC_CALL, &call);
	if (rc < 0)
		return fail("WH_IOC_CALL: %s", strerror(errno));
	json_kuint(j, "sent", status);
	json_kuint(j, "status", call.status);
	call.flags = WH_IO_CALL_ERRNO;
	call.status = 0;
	rc = ioctl(io_fd, WH_IOC_CALL, &call);
	json_kint(j, "errno", rc < 0 ? errno : 0);
	json_kstr(j, "errno_name", errno_name(rc < 0 ? errno : 0));
	json_kint(j, "table_errno", wh_ntstatus_errno(status));
	return 0;
}

int io_poll(int timeout_ms, struct json *j)
{
	struct pollfd p;
	int rc;

	if (need_io())
		return -1;
	p.fd = io_fd;
	p.events = POLLIN | POLLOUT;
	p.revents = 0;
	rc = poll(&p, 1, timeout_ms);
	json_kint(j, "result", rc);
	json_kbool(j, "pollin", (p.revents & POLLIN) != 0);
	json_kbool(j, "pollout", (p.revents & POLLOUT) != 0);
	json_kbool(j, "pollhup", (p.revents & POLLHUP) != 0);
	return 0;
}

/* ---- many requests from many threads ------------------------------------------------ */

struct io_worker {
	pthread_t thread;
	unsigned index;
	int mode;
	uint64_t count, size, page_offset, file_offset;
	uint32_t code;
	uint8_t *map;			/* two buffers, each at page_offset into its own pages */
	size_t map_len;
	uint64_t done, failed, mismatches;
	int first_errno;
	long first_result;
	uint64_t first_failed_round;
};

static void *io_worker_run(void *arg)
{
	struct io_worker *w = arg;
	size_t span = ((w->page_offset + w->size + AGENT_PAGE_SIZE - 1) / AGENT_PAGE_SIZE) *
		      AGENT_PAGE_SIZE;
	uint8_t *src = w->map + w->page_offset, *dst = w->map + span + w->page_offset;

	for (uint64_t round = 0; round < w->count; round++) {
		uint32_t seed = w->index * 100003u + (uint32_t)round;
		long got;
		int bad = 0, err = 0;

		pattern_fill(src, w->size, seed, 0);
		memset(dst, 0, w->size);
		if (w->mode == IO_STRESS_IOCTL) {
			struct wh_io_call call = {
				.major = WH_IO_DEVICE_CONTROL, .ioctl_code = w->code,
				.input = (uint64_t)(uintptr_t)src, .output = (uint64_t)(uintptr_t)dst,
				.input_length = (uint32_t)w->size, .output_length = (uint32_t)w->size,
			};
			got = ioctl(io_fd, WH_IOC_CALL, &call);
			err = got < 0 ? errno : 0;
			if (!got && (call.status != 0 || call.information != w->size))
				bad = 1, got = (long)call.status;
		} else {
			got = pwrite(io_fd, src, w->size, (off_t)w->file_offset);
			err = got < 0 ? errno : 0;
			if (got == (long)w->size) {
				got = pread(io_fd, dst, w->size, (off_t)w->file_offset);
				err = got < 0 ? errno : 0;
			}
			bad = got != (long)w->size;
		}
		if (!bad && !err) {
			uint64_t mism = 0;

			if (pattern_check(dst, w->size, seed, 0, &mism) != w->size) {
				w->mismatches += mism;
				bad = 1;
			}
		}
		if (bad || err) {
			if (!w->failed) {
				w->first_errno = err;
				w->first_result = got;
				w->first_failed_round = round;
			}
			w->failed++;
		} else {
			w->done++;
		}
	}
	return NULL;
}

int io_stress(unsigned threads, uint64_t count, uint64_t size, uint64_t page_offset, int mode,
	      uint32_t code, uint64_t file_base, struct json *j)
{
	struct io_worker *w;
	uint64_t stride = ((size + AGENT_PAGE_SIZE - 1) / AGENT_PAGE_SIZE) * AGENT_PAGE_SIZE;
	uint64_t done = 0, failed = 0, mismatches = 0;
	double t0;
	int ret = 0;

	if (need_io())
		return -1;
	if (!threads || threads > 256 || !size || page_offset >= AGENT_PAGE_SIZE)
		return fail("io-stress: 1..256 threads, size > 0, offset in page below %u",
			    AGENT_PAGE_SIZE);
	w = calloc(threads, sizeof(*w));
	if (!w)
		return fail("out of memory");
	for (unsigned i = 0; i < threads; i++) {
		size_t span = ((page_offset + size + AGENT_PAGE_SIZE - 1) / AGENT_PAGE_SIZE) *
			      AGENT_PAGE_SIZE;

		w[i].index = i;
		w[i].mode = mode;
		w[i].count = count;
		w[i].size = size;
		w[i].page_offset = page_offset;
		w[i].code = code;
		w[i].file_offset = file_base + i * stride;
		w[i].map_len = 2 * span;
		w[i].map = mmap(NULL, w[i].map_len, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (w[i].map == MAP_FAILED) {
			w[i].map = NULL;
			ret = fail("mmap of %zu bytes: %s", w[i].map_len, strerror(errno));
			goto out;
		}
	}
	t0 = monotonic_us();
	for (unsigned i = 0; i < threads; i++)
		if (pthread_create(&w[i].thread, NULL, io_worker_run, &w[i])) {
			ret = fail("pthread_create failed");
			for (unsigned k = 0; k < i; k++)
				pthread_join(w[k].thread, NULL);
			goto out;
		}
	for (unsigned i = 0; i < threads; i++)
		pthread_join(w[i].thread, NULL);
	json_kdouble(j, "elapsed_us", monotonic_us() - t0);
	json_kuint(j, "threads", threads);
	json_kuint(j, "count", count);
	json_kuint(j, "size", size);
	json_kuint(j, "page_offset", page_offset);
	json_key(j, "failures");
	json_begin_array(j);
	for (unsigned i = 0; i < threads; i++) {
		done += w[i].done;
		failed += w[i].failed;
		mismatches += w[i].mismatches;
		if (!w[i].failed)
			continue;
		json_begin_object(j);
		json_kuint(j, "thread", i);
		json_kuint(j, "failed", w[i].failed);
		json_kuint(j, "round", w[i].first_failed_round);
		json_kint(j, "result", w[i].first_result);
		json_kstr(j, "errno_name", errno_name(w[i].first_errno));
		json_end_object(j);
	}
	json_end_array(j);
	json_kuint(j, "done", done);
	json_kuint(j, "failed", failed);
	json_kuint(j, "mismatches", mismatches);
out:
	for (unsigned i = 0; i < threads; i++)
		if (w[i].map)
			munmap(w[i].map, w[i].map_len);
	free(w);
	return ret;
}
