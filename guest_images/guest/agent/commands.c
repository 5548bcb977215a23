/*
 * The agent's commands. A command line is words separated by blanks:
 * positional arguments, then key=value options. Each command writes the
 * fields of one JSON object; a command that cannot do its job fails with a
 * message instead (a completion with an error status or a verification that
 * found a difference is a result, not a failure: tests look at it).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "agent.h"

#define DEFAULT_TIMEOUT_MS 20000
#define HEXDUMP_MAX 4096
#define PINGPONG_MAX 1000000

char agent_error[512];

int fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(agent_error, sizeof(agent_error), fmt, ap);
	va_end(ap);
	return -1;
}

struct args {
	int npos;
	char *pos[AGENT_MAX_ARGS];
	int nopt;
	char *key[AGENT_MAX_ARGS];
	char *value[AGENT_MAX_ARGS];
};

static const char *opt(const struct args *a, const char *key)
{
	for (int i = 0; i < a->nopt; i++)
		if (strcmp(a->key[i], key) == 0)
			return a->value[i];
	return NULL;
}

static int num(const char *what, const char *text, uint64_t *out)
{
	if (parse_u64(text, out))
		return fail("%s: '%s' is not a number (decimal, 0x hex, K/M/G suffix)", what, text);
	return 0;
}

static int opt_num(const struct args *a, const char *key, uint64_t dflt, uint64_t *out)
{
	const char *v = opt(a, key);

	*out = dflt;
	return v ? num(key, v, out) : 0;
}

/* Rejects options the command does not know, so a typo never passes silently. */
static int known_options(const struct args *a, const char *const *allowed)
{
	for (int i = 0; i < a->nopt; i++) {
		int ok = 0;

		for (const char *const *k = allowed; *k; k++)
			if (strcmp(*k, a->key[i]) == 0)
				ok = 1;
		if (!ok)
			return fail("unknown option '%s'", a->key[i]);
	}
	return 0;
}

static struct buffer *need_buffer(const char *name)
{
	struct buffer *b = buffer_find(name);

	if (!b)
		fail("no buffer named '%s' (alloc or phys first)", name);
	return b;
}

static int need_device(void)
{
	return device_open(NULL);
}

/* [start, start+length) inside buffer b from options start= and length=. */
static int buffer_range(const struct args *a, const struct buffer *b, uint64_t *start, uint64_t *len)
{
	if (opt_num(a, "start", 0, start) || opt_num(a, "length", b->size - (*start < b->size ? *start : b->size), len))
		return -1;
	if (*start > b->size || *len > b->size - *start)
		return fail("range start=%llu length=%llu is outside buffer '%s' (%llu bytes)",
			    (unsigned long long)*start, (unsigned long long)*len, b->name,
			    (unsigned long long)b->size);
	return 0;
}

static void report_segments(struct json *j, const struct segment_list *segs)
{
	json_key(j, "segments");
	json_begin_array(j);
	for (uint32_t i = 0; segs && i < segs->count; i++) {
		json_begin_object(j);
		json_kuint(j, "gpa", segs->seg[i].gpa);
		json_kuint(j, "length", segs->seg[i].length);
		json_end_object(j);
	}
	json_end_array(j);
}

static void report_completion(struct json *j, uint16_t opcode, uint64_t device_offset,
			      uint64_t length, const struct segment_list *segs, uint32_t flags,
			      const struct completion_record *c)
{
	json_key(j, "descriptor");
	json_begin_object(j);
	json_kstr(j, "opcode", opcode_name(opcode));
	json_kuint(j, "device_offset", device_offset);
	json_kuint(j, "length", length);
	json_kuint(j, "nseg", segs ? segs->count : 0);
	json_kbool(j, "indirect", (flags & WH_DESC_INDIRECT) != 0);
	report_segments(j, segs);
	json_end_object(j);
	json_key(j, "completion");
	json_begin_object(j);
	json_kuint(j, "request_id", c->cqe.request_id);
	json_kstr(j, "status", cq_status_name(c->cqe.status));
	json_kuint(j, "status_code", c->cqe.status);
	json_kstr(j, "reason", error_reason_name(c->cqe.reason));
	json_kuint(j, "reason_code", c->cqe.reason);
	json_kuint(j, "transferred", c->cqe.transferred);
	json_kuint(j, "sequence", c->cqe.sequence);
	json_kdouble(j, "latency_us", c->latency_us);
	json_end_object(j);
}

static int timeout_option(const struct args *a, int *timeout_ms)
{
	uint64_t t;

	if (opt_num(a, "timeout", DEFAULT_TIMEOUT_MS, &t))
		return -1;
	if (t == 0 || t > 3600000)
		return fail("timeout=%llu ms out of range (1 to 3600000)", (unsigned long long)t);
	*timeout_ms = (int)t;
	return 0;
}

/* timeout=MS indirect=0|1 id=REQUEST_ID (a known id lets the host aim a fault at it). */
static int submit_options(const struct args *a, struct submit_options *o)
{
	uint64_t indirect;

	memset(o, 0, sizeof(*o));
	if (timeout_option(a, &o->timeout_ms) || opt_num(a, "indirect", 0, &indirect) ||
	    opt_num(a, "id", 0, &o->request_id))
		return -1;
	o->indirect = indirect != 0;
	return 0;
}

/* ---------------------------------------------------------------- commands */

static int cmd_version(const struct args *a, struct json *j)
{
	(void)a;
	json_kstr(j, "agent", "wdfhil-agent");
	json_kuint(j, "abi_version", WH_ABI_VERSION);
	return 0;
}

static int cmd_open(const struct args *a, struct json *j)
{
	if (device_open(a->pos[0]))
		return -1;
	json_kstr(j, "device", device_path());
	return 0;
}

static int cmd_info(const struct args *a, struct json *j)
{
	char path[256], text[64] = "";
	const char *base;
	FILE *f;

	(void)a;
	if (need_device())
		return -1;
	device_report_header(j);
	base = strrchr(device_path(), '/');
	snprintf(path, sizeof(path), "/sys/class/wdfhil/%s/interrupts", base ? base + 1 : device_path());
	f = fopen(path, "r");
	if (f) {
		if (fgets(text, sizeof(text), f))
			json_kuint(j, "interrupts", strtoull(text, NULL, 10));
		fclose(f);
	}
	json_kuint(j, "stray_completions", device_stray_completions());
	return 0;
}

static int parse_placement(const char *text, enum placement *where)
{
	if (!text || strcmp(text, "any") == 0)
		*where = PLACE_ANY;
	else if (strcmp(text, "low") == 0)
		*where = PLACE_LOW;
	else if (strcmp(text, "high") == 0)
		*where = PLACE_HIGH;
	else
		return fail("where=%s: expected any, low (below 4 GiB) or high (above 4 GiB)", text);
	return 0;
}

static int cmd_alloc(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "offset", "where", "merge", NULL };
	uint64_t size, offset, merge;
	enum placement where = PLACE_ANY;
	struct buffer *b;

	if (known_options(a, allowed) || num("size", a->pos[1], &size) ||
	    opt_num(a, "offset", 0, &offset) || opt_num(a, "merge", 1, &merge) ||
	    parse_placement(opt(a, "where"), &where))
		return -1;
	if (buffer_alloc(a->pos[0], size, offset, where, merge != 0, &b))
		return -1;
	buffer_report(j, b);
	return 0;
}

static int cmd_phys(const struct args *a, struct json *j)
{
	uint64_t gpa, size;
	struct buffer *b;

	if (num("gpa", a->pos[1], &gpa) || num("size", a->pos[2], &size) ||
	    buffer_phys(a->pos[0], gpa, size, &b))
		return -1;
	buffer_report(j, b);
	return 0;
}

static int cmd_free(const struct args *a, struct json *j)
{
	if (buffer_free(a->pos[0]))
		return -1;
	json_kstr(j, "name", a->pos[0]);
	return 0;
}

/* NAME VALUE [start=N] [length=N]: a buffer, a number and a range inside the buffer. */
static struct buffer *buffer_value_range(const struct args *a, const char *what, uint64_t *value,
					 uint64_t *start, uint64_t *len)
{
	static const char *const allowed[] = { "start", "length", NULL };
	struct buffer *b = need_buffer(a->pos[0]);

	if (!b || known_options(a, allowed) || num(what, a->pos[1], value) ||
	    buffer_range(a, b, start, len))
		return NULL;
	return b;
}

static int cmd_fill(const struct args *a, struct json *j)
{
	uint64_t seed, start, len;
	struct buffer *b = buffer_value_range(a, "seed", &seed, &start, &len);

	if (!b)
		return -1;
	pattern_fill(b->data + start, len, (uint32_t)seed, start);
	json_kstr(j, "name", b->name);
	json_kuint(j, "seed", (uint32_t)seed);
	json_kuint(j, "start", start);
	json_kuint(j, "length", len);
	return 0;
}

static int cmd_memset(const struct args *a, struct json *j)
{
	uint64_t byte, start, len;
	struct buffer *b = buffer_value_range(a, "byte", &byte, &start, &len);

	if (!b)
		return -1;
	if (byte > 255)
		return fail("byte %llu is not a byte", (unsigned long long)byte);
	memset(b->data + start, (int)byte, len);
	json_kstr(j, "name", b->name);
	json_kuint(j, "byte", byte);
	json_kuint(j, "length", len);
	return 0;
}

static void report_check(struct json *j, const volatile uint8_t *p, uint64_t len, uint32_t seed,
			 uint64_t start)
{
	uint64_t mismatches;
	uint64_t first = pattern_check(p, len, seed, start, &mismatches);

	json_kbool(j, "match", first == len);
	json_kuint(j, "checked", len);
	json_kuint(j, "mismatches", mismatches);
	if (first < len) {
		json_kuint(j, "first_mismatch", start + first);
		json_kuint(j, "expected", pattern_byte(seed, start + first));
		json_kuint(j, "actual", p[first]);
	} else {
		json_kint(j, "first_mismatch", -1);
	}
}

static int cmd_verify(const struct args *a, struct json *j)
{
	uint64_t seed, start, len;
	struct buffer *b = buffer_value_range(a, "seed", &seed, &start, &len);

	if (!b)
		return -1;
	json_kstr(j, "name", b->name);
	json_kuint(j, "seed", (uint32_t)seed);
	json_kuint(j, "start", start);
	report_check(j, b->data + start, len, (uint32_t)seed, start);
	return 0;
}

/* Watches a buffer until it stops holding the pattern (e.g. a stale DMA lands) or time runs out. */
static int cmd_watch(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "timeout", "start", "length", NULL };
	struct buffer *b = need_buffer(a->pos[0]);
	uint64_t seed, start, len, mismatches = 0, first;
	int timeout_ms = DEFAULT_TIMEOUT_MS;
	double t0 = monotonic_us();

	if (!b || known_options(a, allowed) || num("seed", a->pos[1], &seed) ||
	    buffer_range(a, b, &start, &len) || timeout_option(a, &timeout_ms))
		return -1;
	for (;;) {
		struct timespec pause = { 0, 1000000 };

		first = pattern_check(b->data + start, len, (uint32_t)seed, start, &mismatches);
		if (first < len || monotonic_us() - t0 > timeout_ms * 1000.0)
			break;
		nanosleep(&pause, NULL);
	}
	json_kstr(j, "name", b->name);
	json_kbool(j, "changed", first < len);
	json_kdouble(j, "after_ms", (monotonic_us() - t0) / 1000.0);
	report_check(j, b->data + start, len, (uint32_t)seed, start);
	return 0;
}

static void hex_field(struct json *j, const char *key, const volatile uint8_t *p, uint64_t len)
{
	static const char digits[] = "0123456789abcdef";
	char *text = malloc(len * 2 + 1);

	if (!text) {
		json_kstr(j, key, "");
		return;
	}
	for (uint64_t i = 0; i < len; i++) {
		text[2 * i] = digits[p[i] >> 4];
		text[2 * i + 1] = digits[p[i] & 15];
	}
	text[len * 2] = '\0';
	json_kstr(j, key, text);
	free(text);
}

static int cmd_hexdump(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "start", "length", NULL };
	struct buffer *b = need_buffer(a->pos[0]);
	uint64_t start, len;

	if (!b || known_options(a, allowed) || buffer_range(a, b, &start, &len))
		return -1;
	if (len > HEXDUMP_MAX)
		return fail("hexdump of %llu bytes: at most %d at a time (use start= and length=)",
			    (unsigned long long)len, HEXDUMP_MAX);
	json_kstr(j, "name", b->name);
	json_kuint(j, "start", start);
	hex_field(j, "hex", b->data + start, len);
	return 0;
}

static int transfer(const struct args *a, struct json *j, uint16_t opcode)
{
	static const char *const allowed[] = { "timeout", "indirect", "id", NULL };
	struct buffer *b = need_buffer(a->pos[0]);
	struct completion_record c;
	struct submit_options o;
	uint64_t devoff;
	uint32_t flags = 0;

	if (!b || known_options(a, allowed) || num("device_offset", a->pos[1], &devoff) ||
	    submit_options(a, &o) || need_device())
		return -1;
	if (device_submit(&o, opcode, devoff, b->size, &b->segs, &c, &flags))
		return -1;
	json_kstr(j, "name", b->name);
	report_completion(j, opcode, devoff, b->size, &b->segs, flags, &c);
	return 0;
}

static int cmd_write(const struct args *a, struct json *j) { return transfer(a, j, WH_OP_WRITE); }
static int cmd_read(const struct args *a, struct json *j) { return transfer(a, j, WH_OP_READ); }

static int parse_opcode(const char *text, uint16_t *opcode)
{
	uint64_t v;

	if (strcmp(text, "NOP") == 0 || strcmp(text, "nop") == 0)
		*opcode = WH_OP_NOP;
	else if (strcmp(text, "WRITE") == 0 || strcmp(text, "write") == 0)
		*opcode = WH_OP_WRITE;
	else if (strcmp(text, "READ") == 0 || strcmp(text, "read") == 0)
		*opcode = WH_OP_READ;
	else if (parse_u64(text, &v) == 0 && v <= 0xffff)
		*opcode = (uint16_t)v;	/* raw numbers let tests send a bad opcode */
	else
		return fail("opcode '%s': expected NOP, WRITE, READ or a number", text);
	return 0;
}

/* A descriptor built by hand: seg=GPA:LEN options in order, length= defaults to their sum. */
static int cmd_submit(const struct args *a, struct json *j)
{
	struct wh_segment seg[WH_MAX_SEGMENTS > 256 ? 256 : WH_MAX_SEGMENTS];
	struct segment_list segs = { seg, 0 };
	struct completion_record c;
	struct submit_options o;
	uint64_t devoff, length = 0, sum = 0;
	uint16_t opcode = WH_OP_NOP;
	uint32_t flags = 0;

	if (parse_opcode(a->pos[0], &opcode) || num("device_offset", a->pos[1], &devoff) ||
	    submit_options(a, &o))
		return -1;
	for (int i = 0; i < a->nopt; i++) {
		char *colon;
		uint64_t gpa, len;

		if (strcmp(a->key[i], "seg") != 0) {
			if (strcmp(a->key[i], "length") && strcmp(a->key[i], "indirect") &&
			    strcmp(a->key[i], "timeout") && strcmp(a->key[i], "id"))
				return fail("unknown option '%s'", a->key[i]);
			continue;
		}
		colon = strchr(a->value[i], ':');
		if (!colon)
			return fail("seg=%s: expected seg=GPA:LENGTH", a->value[i]);
		*colon = '\0';
		if (num("segment gpa", a->value[i], &gpa) || num("segment length", colon + 1, &len)) {
			*colon = ':';
			return -1;
		}
		*colon = ':';
		if (len > 0xffffffffull)
			return fail("segment length %llu does not fit 32 bits", (unsigned long long)len);
		if (segs.count == sizeof(seg) / sizeof(seg[0]))
			return fail("too many segments (at most %zu)", sizeof(seg) / sizeof(seg[0]));
		seg[segs.count].gpa = gpa;
		seg[segs.count].length = (uint32_t)len;
		seg[segs.count].reserved = 0;
		segs.count++;
		sum += len;
	}
	if (opt_num(a, "length", sum, &length) || need_device())
		return -1;
	if (device_submit(&o, opcode, devoff, length, &segs, &c, &flags))
		return -1;
	report_completion(j, opcode, devoff, length, &segs, flags, &c);
	return 0;
}

static int cmd_nop(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "timeout", "id", NULL };
	struct completion_record c;
	struct submit_options o;

	if (known_options(a, allowed) || submit_options(a, &o) || need_device() ||
	    device_submit(&o, WH_OP_NOP, 0, 0, NULL, &c, NULL))
		return -1;
	report_completion(j, WH_OP_NOP, 0, 0, NULL, 0, &c);
	return 0;
}

static int compare_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return (a > b) - (a < b);
}

/* Nearest-rank percentile of sorted values. */
static double percentile(const double *sorted, uint64_t n, double p)
{
	uint64_t rank = (uint64_t)(p / 100.0 * (double)n + 0.999999);

	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

/* Doorbell -> completion interrupt round trips with NOP descriptors. */
static int cmd_pingpong(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "timeout", "warmup", NULL };
	uint64_t n, warmup;
	double *lat, sum = 0;
	struct submit_options o;

	if (known_options(a, allowed) || num("count", a->pos[0], &n) ||
	    opt_num(a, "warmup", 10, &warmup) || submit_options(a, &o) || need_device())
		return -1;
	if (n == 0 || n > PINGPONG_MAX || warmup > PINGPONG_MAX)
		return fail("count %llu out of range (1 to %d)", (unsigned long long)n, PINGPONG_MAX);
	lat = calloc(n, sizeof(*lat));
	if (!lat)
		return fail("out of memory");
	for (uint64_t i = 0; i < warmup + n; i++) {
		struct completion_record c;

		if (device_submit(&o, WH_OP_NOP, 0, 0, NULL, &c, NULL)) {
			free(lat);
			return -1;
		}
		if (c.cqe.status != WH_CQ_OK) {
			free(lat);
			return fail("NOP completed with status %s reason %s", cq_status_name(c.cqe.status),
				    error_reason_name(c.cqe.reason));
		}
		if (i >= warmup) {
			lat[i - warmup] = c.latency_us;
			sum += c.latency_us;
		}
	}
	qsort(lat, n, sizeof(*lat), compare_double);
	json_kuint(j, "count", n);
	json_kdouble(j, "p50_us", percentile(lat, n, 50));
	json_kdouble(j, "p99_us", percentile(lat, n, 99));
	json_kdouble(j, "min_us", lat[0]);
	json_kdouble(j, "max_us", lat[n - 1]);
	json_kdouble(j, "mean_us", sum / (double)n);
	free(lat);
	return 0;
}

/* DEVICE_OFFSET LENGTH SEED: a range of the device's data memory as the guest maps it. */
static volatile uint8_t *device_range(const struct args *a, struct json *j, uint64_t *len,
				      uint32_t *seed)
{
	uint64_t off, s;
	volatile uint8_t *p;

	if (num("device_offset", a->pos[0], &off) || num("length", a->pos[1], len) ||
	    num("seed", a->pos[2], &s) || need_device())
		return NULL;
	p = device_data(off, *len);
	*seed = (uint32_t)s;
	if (p)
		json_kuint(j, "device_offset", off);
	return p;
}

static int cmd_device_fill(const struct args *a, struct json *j)
{
	uint64_t len;
	uint32_t seed;
	volatile uint8_t *p = device_range(a, j, &len, &seed);

	if (!p)
		return -1;
	for (uint64_t i = 0; i < len; i++)
		p[i] = pattern_byte(seed, i);
	json_kuint(j, "length", len);
	return 0;
}

static int cmd_device_verify(const struct args *a, struct json *j)
{
	uint64_t len;
	uint32_t seed;
	volatile uint8_t *p = device_range(a, j, &len, &seed);

	if (!p)
		return -1;
	report_check(j, p, len, seed, 0);
	return 0;
}

static int cmd_reset(const struct args *a, struct json *j)
{
	int timeout_ms = DEFAULT_TIMEOUT_MS;

	if (timeout_option(a, &timeout_ms) || need_device() || device_reset(timeout_ms))
		return -1;
	json_kuint(j, "status", header_read32(WH_HDR_STATUS));
	return 0;
}

static int cmd_sleep(const struct args *a, struct json *j)
{
	uint64_t ms;
	struct timespec t;

	if (num("milliseconds", a->pos[0], &ms))
		return -1;
	if (ms > 3600000)
		return fail("sleep %llu ms: at most an hour", (unsigned long long)ms);
	t.tv_sec = (time_t)(ms / 1000);
	t.tv_nsec = (long)(ms % 1000) * 1000000L;
	nanosleep(&t, NULL);
	json_kuint(j, "slept_ms", ms);
	return 0;
}

static int cmd_gpa(const struct args *a, struct json *j)
{
	struct buffer *b = need_buffer(a->pos[0]);
	uint64_t off, gpa;

	if (!b || num("offset", a->pos[1], &off))
		return -1;
	if (off >= b->size)
		return fail("offset %llu is outside buffer '%s'", (unsigned long long)off, b->name);
	if (b->kind == BUFFER_USER && virt_to_gpa(b->data + off, &gpa))
		return -1;
	if (b->kind == BUFFER_PHYS)
		gpa = b->segs.seg[0].gpa + off;
	json_kuint(j, "gpa", gpa);
	return 0;
}

/* ---------------------------------------------------------------- guest I/O */

static int cmd_io_open(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "nonblock", NULL };
	uint64_t nonblock;

	if (known_options(a, allowed) || opt_num(a, "nonblock", 0, &nonblock) ||
	    io_open(a->npos ? a->pos[0] : NULL, nonblock != 0))
		return -1;
	json_kstr(j, "path", io_device_path());
	json_kbool(j, "nonblock", nonblock != 0);
	return 0;
}

static int cmd_io_close(const struct args *a, struct json *j)
{
	(void)a;
	io_close();
	json_kstr(j, "path", io_device_path());
	return 0;
}

/* io-read|io-write NAME [offset=FILE_OFFSET] [start=N] [length=N] */
static int io_rw_command(const struct args *a, struct json *j, int write_)
{
	static const char *const allowed[] = { "offset", "start", "length", NULL };
	struct buffer *b = need_buffer(a->pos[0]);
	uint64_t start, len, offset;

	if (!b || known_options(a, allowed) || buffer_range(a, b, &start, &len) ||
	    opt_num(a, "offset", 0, &offset))
		return -1;
	return io_rw(write_, b, start, len, offset, j);
}

static int cmd_io_read(const struct args *a, struct json *j) { return io_rw_command(a, j, 0); }
static int cmd_io_write(const struct args *a, struct json *j) { return io_rw_command(a, j, 1); }

static int parse_major(const char *text, uint32_t *major)
{
	uint64_t v;

	if (!strcmp(text, "read") || !strcmp(text, "READ"))
		*major = WH_IO_READ;
	else if (!strcmp(text, "write") || !strcmp(text, "WRITE"))
		*major = WH_IO_WRITE;
	else if (!strcmp(text, "ioctl") || !strcmp(text, "DEVICE_CONTROL"))
		*major = WH_IO_DEVICE_CONTROL;
	else if (!strcmp(text, "internal") || !strcmp(text, "INTERNAL_DEVICE_CONTROL"))
		*major = WH_IO_INTERNAL_DEVICE_CONTROL;
	else if (!parse_u64(text, &v) && v <= 0xffff)
		*major = (uint32_t)v;
	else
		return fail("major '%s': expected read, write, ioctl, internal or a number", text);
	return 0;
}

/* io-call MAJOR CODE [in=NAME] [out=NAME] [in_start=] [in_length=] [out_start=]
 * [out_length=] [offset=] [errno=1] [alarm=MS]: WH_IOC_CALL, the exact NTSTATUS back;
 * alarm: a SIGALRM (handled, not restarting) MS into the call, to test cancellation. */
static int cmd_io_call(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "in", "out", "in_start", "in_length", "out_start",
					       "out_length", "offset", "errno", "alarm", NULL };
	const char *in_name = opt(a, "in"), *out_name = opt(a, "out");
	struct buffer *in = NULL, *out = NULL;
	uint64_t code, in_start, in_len, out_start, out_len, offset, want_errno, alarm_ms;
	uint32_t major = 0;

	if (known_options(a, allowed) || parse_major(a->pos[0], &major) ||
	    num("ioctl code", a->pos[1], &code))
		return -1;
	if ((in_name && !(in = need_buffer(in_name))) || (out_name && !(out = need_buffer(out_name))))
		return -1;
	if (opt_num(a, "in_start", 0, &in_start) ||
	    opt_num(a, "in_length", in ? in->size - (in_start < in->size ? in_start : in->size) : 0, &in_len) ||
	    opt_num(a, "out_start", 0, &out_start) ||
	    opt_num(a, "out_length", out ? out->size - (out_start < out->size ? out_start : out->size) : 0, &out_len) ||
	    opt_num(a, "offset", 0, &offset) || opt_num(a, "errno", 0, &want_errno) ||
	    opt_num(a, "alarm", 0, &alarm_ms))
		return -1;
	if ((in && (in_start > in->size || in_len > in->size - in_start)) ||
	    (out && (out_start > out->size || out_len > out->size - out_start)))
		return fail("in/out range outside its buffer");
	if (in_len > 0xffffffffull || out_len > 0xffffffffull || code > 0xffffffffull)
		return fail("lengths and code are 32-bit");
	json_kuint(j, "major", major);
	json_kuint(j, "code", code);
	return io_call(major, (uint32_t)code, in ? in->data + in_start : NULL, (uint32_t)in_len,
		       out ? out->data + out_start : NULL, (uint32_t)out_len, offset,
		       want_errno != 0, alarm_ms, j);
}

static int cmd_io_status(const struct args *a, struct json *j)
{
	uint64_t status, code;

	if (num("NTSTATUS", a->pos[0], &status) || num("ioctl code", a->pos[1], &code))
		return -1;
	if (status > 0xffffffffull || code > 0xffffffffull)
		return fail("NTSTATUS and code are 32-bit");
	return io_status((uint32_t)status, (uint32_t)code, j);
}

static int cmd_io_poll(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "timeout", NULL };
	uint64_t t;

	if (known_options(a, allowed) || opt_num(a, "timeout", 0, &t))
		return -1;
	return io_poll((int)(t > 3600000 ? 3600000 : t), j);
}

/* io-stress THREADS COUNT SIZE [page_offset=N] [mode=rw|ioctl] [code=IOCTL] [offset=FILE_BASE] */
static int cmd_io_stress(const struct args *a, struct json *j)
{
	static const char *const allowed[] = { "page_offset", "mode", "code", "offset", NULL };
	uint64_t threads, count, size, page_offset, code, base;
	const char *mode = opt(a, "mode");
	int m = IO_STRESS_RW;

	if (known_options(a, allowed) || num("threads", a->pos[0], &threads) ||
	    num("count", a->pos[1], &count) || num("size", a->pos[2], &size) ||
	    opt_num(a, "page_offset", 0, &page_offset) || opt_num(a, "code", 0, &code) ||
	    opt_num(a, "offset", 0, &base))
		return -1;
	if (mode && !strcmp(mode, "ioctl"))
		m = IO_STRESS_IOCTL;
	else if (mode && strcmp(mode, "rw"))
		return fail("mode=%s: expected rw or ioctl", mode);
	if (m == IO_STRESS_IOCTL && !code)
		return fail("mode=ioctl needs code=IOCTL_CODE");
	if (size > 0xffffffffull || code > 0xffffffffull)
		return fail("size and code are 32-bit");
	return io_stress((unsigned)threads, count, size, page_offset, m, (uint32_t)code, base, j);
}

struct command {
	const char *name;
	int min_pos, max_pos;
	const char *usage;
	int (*run)(const struct args *a, struct json *j);
};

static int cmd_help(const struct args *a, struct json *j);

static const struct command commands[] = {
	{ "help", 0, 0, "help", cmd_help },
	{ "version", 0, 0, "version", cmd_version },
	{ "open", 1, 1, "open DEVICE_PATH", cmd_open },
	{ "info", 0, 0, "info", cmd_info },
	{ "alloc", 2, 2, "alloc NAME SIZE [offset=N] [where=any|low|high] [merge=1|0]", cmd_alloc },
	{ "phys", 3, 3, "phys NAME GPA SIZE", cmd_phys },
	{ "free", 1, 1, "free NAME", cmd_free },
	{ "fill", 2, 2, "fill NAME SEED [start=N] [length=N]", cmd_fill },
	{ "memset", 2, 2, "memset NAME BYTE [start=N] [length=N]", cmd_memset },
	{ "verify", 2, 2, "verify NAME SEED [start=N] [length=N]", cmd_verify },
	{ "watch", 2, 2, "watch NAME SEED [timeout=MS] [start=N] [length=N]", cmd_watch },
	{ "hexdump", 1, 1, "hexdump NAME [start=N] [length=N]", cmd_hexdump },
	{ "gpa", 2, 2, "gpa NAME OFFSET", cmd_gpa },
	{ "write", 2, 2, "write NAME DEVICE_OFFSET [indirect=1] [id=N] [timeout=MS]", cmd_write },
	{ "read", 2, 2, "read NAME DEVICE_OFFSET [indirect=1] [id=N] [timeout=MS]", cmd_read },
	{ "submit", 2, 2, "submit OPCODE DEVICE_OFFSET seg=GPA:LEN... [length=N] [indirect=1] [id=N] [timeout=MS]", cmd_submit },
	{ "nop", 0, 0, "nop [id=N] [timeout=MS]", cmd_nop },
	{ "pingpong", 1, 1, "pingpong COUNT [warmup=N] [timeout=MS]", cmd_pingpong },
	{ "device-fill", 3, 3, "device-fill DEVICE_OFFSET LENGTH SEED", cmd_device_fill },
	{ "device-verify", 3, 3, "device-verify DEVICE_OFFSET LENGTH SEED", cmd_device_verify },
	{ "reset", 0, 0, "reset [timeout=MS]", cmd_reset },
	{ "sleep", 1, 1, "sleep MS", cmd_sleep },
	{ "io-open", 0, 1, "io-open [PATH] [nonblock=1]   (default /dev/wdfio0)", cmd_io_open },
	{ "io-close", 0, 0, "io-close", cmd_io_close },
	{ "io-read", 1, 1, "io-read NAME [offset=FILE_OFFSET] [start=N] [length=N]", cmd_io_read },
	{ "io-write", 1, 1, "io-write NAME [offset=FILE_OFFSET] [start=N] [length=N]", cmd_io_write },
	{ "io-call", 2, 2, "io-call read|write|ioctl|internal CODE [in=NAME] [out=NAME] [in_start=N] [in_length=N] [out_start=N] [out_length=N] [offset=N] [errno=1] [alarm=MS]", cmd_io_call },
	{ "io-status", 2, 2, "io-status NTSTATUS IOCTL_CODE", cmd_io_status },
	{ "io-poll", 0, 0, "io-poll [timeout=MS]", cmd_io_poll },
	{ "io-stress", 3, 3, "io-stress THREADS COUNT SIZE [page_offset=N] [mode=rw|ioctl] [code=IOCTL] [offset=FILE_BASE]", cmd_io_stress },
};

static void usage_list(struct json *j)
{
	json_key(j, "usage");
	json_begin_array(j);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		json_string(j, commands[i].usage);
	json_end_array(j);
}

static int cmd_help(const struct args *a, struct json *j)
{
	(void)a;
	usage_list(j);
	return 0;
}

static int split(char *line, struct args *a)
{
	char *save = NULL;

	memset(a, 0, sizeof(*a));
	for (char *w = strtok_r(line, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save)) {
		char *eq = strchr(w, '=');

		if (eq && eq != w) {
			if (a->nopt == AGENT_MAX_ARGS)
				return fail("too many options (at most %d)", AGENT_MAX_ARGS);
			*eq = '\0';
			a->key[a->nopt] = w;
			a->value[a->nopt++] = eq + 1;
		} else {
			if (a->npos == AGENT_MAX_ARGS)
				return fail("too many arguments (at most %d)", AGENT_MAX_ARGS);
			a->pos[a->npos++] = w;
		}
	}
	return 0;
}

int command_run_line(const char *line, struct json *out)
{
	char *copy = strdup(line);
	const struct command *cmd = NULL;
	struct args a;
	size_t mark = out->len;
	int depth = out->depth, ret = -1;
	unsigned char first = out->first[depth];

	agent_error[0] = '\0';
	json_begin_object(out);
	if (!copy) {
		fail("out of memory");
		goto failed;
	}
	if (split(copy, &a))
		goto failed;
	if (a.npos == 0) {
		fail("empty command");
		goto failed;
	}
	json_kstr(out, "cmd", a.pos[0]);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, a.pos[0]) == 0)
			cmd = &commands[i];
	if (!cmd) {
		fail("unknown command '%s'", a.pos[0]);
		goto failed;
	}
	/* The handlers see their own arguments: drop the command word. */
	memmove(a.pos, a.pos + 1, sizeof(a.pos[0]) * (size_t)(a.npos - 1));
	a.npos--;
	if (a.npos < cmd->min_pos || a.npos > cmd->max_pos) {
		fail("usage: %s", cmd->usage);
		goto failed;
	}
	json_kbool(out, "ok", 1);
	if (cmd->run(&a, out) == 0) {
		json_end_object(out);
		free(copy);
		return 0;
	}
failed:
	/* Drop whatever the command had written and answer with the error alone. */
	json_truncate(out, mark, depth);
	out->first[depth] = first;
	json_begin_object(out);
	if (cmd)
		json_kstr(out, "cmd", cmd->name);
	json_kbool(out, "ok", 0);
	json_kstr(out, "error", agent_error[0] ? agent_error : "failed");
	if (!cmd)
		usage_list(out);
	json_end_object(out);
	free(copy);
	return ret;
}
