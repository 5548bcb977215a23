/*
 * wdfhil guest agent: declarations shared by its source files.
 *
 * The agent is one static binary. Its state (mlock'ed buffers, the BAR2
 * mapping) lives only as long as the process, so commands are steps that a
 * single invocation runs in sequence (`run`), or that a long-running
 * `serve` process answers one line at a time.
 */
#ifndef WDFHIL_AGENT_H
#define WDFHIL_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include "wdfhil_abi.h"

#define AGENT_PAGE_SIZE 4096u
#define AGENT_MAX_BUFFERS 64
#define AGENT_NAME_MAX 32
#define AGENT_MAX_ARGS 64

/* ---- JSON output (json.c) ---- */
struct json {
	char *buf;
	size_t len, cap;
	int depth;
	unsigned char first[32];	/* per nesting level: no comma needed yet */
};
void json_init(struct json *j);
void json_free(struct json *j);
void json_truncate(struct json *j, size_t len, int depth);
void json_key(struct json *j, const char *key);
void json_begin_object(struct json *j);
void json_end_object(struct json *j);
void json_begin_array(struct json *j);
void json_end_array(struct json *j);
void json_string(struct json *j, const char *s);
void json_uint(struct json *j, uint64_t v);
void json_int(struct json *j, int64_t v);
void json_double(struct json *j, double v);
void json_bool(struct json *j, int v);
/* Shorthands: a key and its value. */
void json_kstr(struct json *j, const char *key, const char *s);
void json_kuint(struct json *j, const char *key, uint64_t v);
void json_kint(struct json *j, const char *key, int64_t v);
void json_kdouble(struct json *j, const char *key, double v);
void json_kbool(struct json *j, const char *key, int v);

/* ---- errors: a command fails by setting the message and returning -1 ---- */
extern char agent_error[512];
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- buffers (buffers.c) ---- */
struct segment_list {
	struct wh_segment *seg;
	uint32_t count;
};

enum buffer_kind { BUFFER_USER = 0, BUFFER_PHYS = 1 };
enum placement { PLACE_ANY = 0, PLACE_LOW = 1, PLACE_HIGH = 2 };

struct buffer {
	char name[AGENT_NAME_MAX];
	enum buffer_kind kind;
	uint8_t *data;			/* first byte of the buffer */
	uint64_t size;
	uint64_t offset;		/* of data within its first page */
	void *map_base;			/* what to munmap */
	size_t map_len;
	uint64_t npages;
	uint64_t *frames;		/* guest-physical address of each page */
	struct segment_list segs;	/* merged (or per page) guest-physical segments */
};

int parse_u64(const char *s, uint64_t *out);	/* decimal, 0x hex, K/M/G suffix */
struct buffer *buffer_find(const char *name);
int buffer_alloc(const char *name, uint64_t size, uint64_t offset, enum placement where,
		 int merge, struct buffer **out);
int buffer_phys(const char *name, uint64_t gpa, uint64_t size, struct buffer **out);
int buffer_free(const char *name);
void buffer_report(struct json *j, const struct buffer *b);
uint8_t pattern_byte(uint32_t seed, uint64_t index);
void pattern_fill(uint8_t *p, uint64_t n, uint32_t seed, uint64_t index0);
/* Index of the first byte that differs from the pattern, or n if none; counts mismatches. */
uint64_t pattern_check(const volatile uint8_t *p, uint64_t n, uint32_t seed, uint64_t index0,
		       uint64_t *mismatches);
int virt_to_gpa(const void *va, uint64_t *gpa);

/* ---- the device (device.c) ---- */
struct completion_record {
	struct wh_cqe cqe;
	double latency_us;
};

/* The device commands use unless `open` chose another (default /dev/wdfhil0). */
void device_set_default(const char *path);
int device_open(const char *path);	/* NULL: the default */
void device_close(void);
int device_is_open(void);
const char *device_path(void);
uint32_t header_read32(uint32_t offset);
uint64_t header_read64(uint32_t offset);
void device_report_header(struct json *j);
struct submit_options {
	int timeout_ms;		/* per request */
	int indirect;		/* use an indirect table even when the segments fit inline */
	uint64_t request_id;	/* 0: the agent picks one (pid << 32 | counter) */
};
/* Submits one descriptor and waits for its completion. */
int device_submit(const struct submit_options *o, uint16_t opcode, uint64_t device_offset,
		  uint64_t length, const struct segment_list *segs, struct completion_record *out,
		  uint32_t *used_flags);
int device_reset(int timeout_ms);
/* Guest view of the device's own memory (BAR2 data area); NULL + fail() if out of range. */
volatile uint8_t *device_data(uint64_t offset, uint64_t length);
uint64_t device_stray_completions(void);
const char *cq_status_name(uint32_t status);
const char *device_status_name(uint32_t status);
const char *error_reason_name(uint32_t reason);
const char *opcode_name(uint32_t opcode);
double monotonic_us(void);

/* ---- guest I/O through /dev/wdfioN (io.c) ---- */
enum { IO_STRESS_RW = 0, IO_STRESS_IOCTL = 1 };
int io_open(const char *path, int nonblock);	/* NULL: the current path (default /dev/wdfio0) */
void io_close(void);
const char *io_device_path(void);
int io_rw(int write_, struct buffer *b, uint64_t start, uint64_t len, uint64_t offset,
	  struct json *j);
int io_call(uint32_t major, uint32_t code, void *in, uint32_t in_len, void *out,
	    uint32_t out_len, uint64_t offset, int want_errno, uint64_t alarm_ms, struct json *j);
int io_status(uint32_t status, uint32_t code, struct json *j);
int io_poll(int timeout_ms, struct json *j);
int io_stress(unsigned threads, uint64_t count, uint64_t size, uint64_t page_offset, int mode,
	      uint32_t code, uint64_t file_base, struct json *j);

/* ---- commands (commands.c) ---- */
/* Runs one command line; writes one JSON object (the result or the error). 0 on success. */
int command_run_line(const char *line, struct json *out);

/* relay.c: the host's command channel on a serial port (never returns unless it fails) */
int relay_main(const char *device, const char *ready_file);

#endif
