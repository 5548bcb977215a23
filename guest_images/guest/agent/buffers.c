/*
 * Buffers the device DMAs into: mlock'ed user memory whose guest-physical
 * frames come from /proc/self/pagemap, or a guest-physical range (the
 * reserved pool window) mapped through /dev/mem. Both report the segment
 * list the device gets, so tests can check the same bytes from the host.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "agent.h"

#define PAGEMAP_PRESENT (1ull << 63)
#define PAGEMAP_PFN_MASK ((1ull << 55) - 1)
#define FOUR_GIB (1ull << 32)
/* A placement search leaves this much (or 1/8 of RAM) available to the guest. */
#define PLACEMENT_MARGIN (64ull << 20)
/* and locks at most this much per region. */
#define PLACEMENT_CHUNK (128ull << 20)

static struct buffer buffers[AGENT_MAX_BUFFERS];

int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno)
		return -1;
	switch (*end) {
	case 'K': case 'k': v <<= 10; end++; break;
	case 'M': case 'm': v <<= 20; end++; break;
	case 'G': case 'g': v <<= 30; end++; break;
	default: break;
	}
	if (*end)
		return -1;
	*out = v;
	return 0;
}

struct buffer *buffer_find(const char *name)
{
	for (int i = 0; i < AGENT_MAX_BUFFERS; i++)
		if (buffers[i].data && strcmp(buffers[i].name, name) == 0)
			return &buffers[i];
	return NULL;
}

static struct buffer *buffer_slot(const char *name)
{
	if (strlen(name) >= AGENT_NAME_MAX) {
		fail("buffer name '%s' is longer than %d characters", name, AGENT_NAME_MAX - 1);
		return NULL;
	}
	if (buffer_find(name)) {
		fail("buffer '%s' already exists (free it first)", name);
		return NULL;
	}
	for (int i = 0; i < AGENT_MAX_BUFFERS; i++)
		if (!buffers[i].data)
			return &buffers[i];
	fail("too many buffers (at most %d)", AGENT_MAX_BUFFERS);
	return NULL;
}

static int pagemap_fd = -1;

/* Guest-physical frame addresses of npages pages starting at va (page aligned). */
static int read_frames(const void *va, uint64_t npages, uint64_t *frames)
{
	uint64_t vpn = (uintptr_t)va / AGENT_PAGE_SIZE;
	uint64_t done = 0;

	if (pagemap_fd < 0) {
		pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		if (pagemap_fd < 0)
			return fail("open /proc/self/pagemap: %s", strerror(errno));
	}
	/* In bulk: placement searches read hundreds of thousands of entries. */
	while (done < npages) {
		ssize_t n = pread(pagemap_fd, frames + done, (npages - done) * sizeof(*frames),
				  (off_t)((vpn + done) * sizeof(*frames)));

		if (n <= 0 || n % sizeof(*frames))
			return fail("read /proc/self/pagemap: %s", n < 0 ? strerror(errno) : "short read");
		done += (uint64_t)n / sizeof(*frames);
	}
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t entry = frames[i];

		if (!(entry & PAGEMAP_PRESENT))
			return fail("page %llu of the buffer is not present although it is locked",
				    (unsigned long long)i);
		if ((entry & PAGEMAP_PFN_MASK) == 0)
			return fail("/proc/self/pagemap hides frame numbers (the agent must run as root)");
		frames[i] = (entry & PAGEMAP_PFN_MASK) * AGENT_PAGE_SIZE;
	}
	return 0;
}

int virt_to_gpa(const void *va, uint64_t *gpa)
{
	uint64_t frame;
	uintptr_t page = (uintptr_t)va & ~(uintptr_t)(AGENT_PAGE_SIZE - 1);

	if (read_frames((const void *)page, 1, &frame))
		return -1;
	*gpa = frame + ((uintptr_t)va - page);
	return 0;
}

/* Segments covering [offset, offset+size) of pages with the given frames. */
static int build_segments(struct buffer *b, int merge)
{
	uint64_t pos = 0;

	b->segs.seg = calloc(b->npages, sizeof(*b->segs.seg));
	if (!b->segs.seg)
		return fail("out of memory for %llu segments", (unsigned long long)b->npages);
	b->segs.count = 0;
	while (pos < b->size) {
		uint64_t abs = b->offset + pos;
		uint64_t page = abs / AGENT_PAGE_SIZE;
		uint64_t in_page = abs % AGENT_PAGE_SIZE;
		uint64_t len = AGENT_PAGE_SIZE - in_page;
		uint64_t gpa = b->frames[page] + in_page;
		struct wh_segment *last = b->segs.count ? &b->segs.seg[b->segs.count - 1] : NULL;

		if (len > b->size - pos)
			len = b->size - pos;
		if (merge && last && last->gpa + last->length == gpa &&
		    (uint64_t)last->length + len <= 0xffffffffull) {
			last->length += (uint32_t)len;
		} else {
			b->segs.seg[b->segs.count].gpa = gpa;
			b->segs.seg[b->segs.count].length = (uint32_t)len;
			b->segs.seg[b->segs.count].reserved = 0;
			b->segs.count++;
		}
		pos += len;
	}
	return 0;
}

static int frame_fits(uint64_t frame, enum placement where)
{
	if (where == PLACE_HIGH)
		return frame >= FOUR_GIB;
	if (where == PLACE_LOW)
		return frame + AGENT_PAGE_SIZE <= FOUR_GIB;
	return 1;
}

struct region {
	uint8_t *base;
	size_t len;
};

/* A field of /proc/meminfo in bytes (0 if missing). */
static uint64_t meminfo(const char *field)
{
	char line[256];
	unsigned long long kib = 0;
	size_t n = strlen(field);
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, n) == 0 && line[n] == ':')
			sscanf(line + n + 1, "%llu", &kib);
	fclose(f);
	return (uint64_t)kib << 10;
}

/* Whether the guest has any RAM at or above 4 GiB (/proc/iomem, root sees addresses). */
static int ram_above_4g(void)
{
	char line[256];
	unsigned long long start, end;
	int found = 0;
	FILE *f = fopen("/proc/iomem", "r");

	if (!f)
		return 1;	/* cannot tell: let the search find out */
	while (fgets(line, sizeof(line), f))
		if (line[0] != ' ' && strstr(line, ": System RAM") &&
		    sscanf(line, "%llx-%llx", &start, &end) == 2 && end >= FOUR_GIB)
			found = 1;
	fclose(f);
	return found;
}

/*
 * Locks regions of pages and looks for npages consecutive virtual pages
 * whose frames all satisfy the placement. The kernel hands out its highest
 * zone first, so low pages on a guest with RAM above 4 GiB come only after
 * most of that RAM is taken: regions grow and are held (so the allocator
 * cannot hand their frames back) until a run is found or the guest would
 * run short of memory (everything is released at the end either way).
 */
static int alloc_placed(uint64_t npages, enum placement where, struct buffer *b)
{
	struct region tried[64];
	int ntried = 0, ret = -1;
	uint64_t avail = meminfo("MemAvailable"), total = meminfo("MemTotal");
	uint64_t margin = total / 8 > PLACEMENT_MARGIN ? total / 8 : PLACEMENT_MARGIN;
	uint64_t budget_pages = (avail > margin ? avail - margin : 0) / AGENT_PAGE_SIZE;
	uint64_t used = 0, grow = npages * 4 + 256;

	agent_error[0] = '\0';
	if (where == PLACE_HIGH && !ram_above_4g())
		return fail("the guest has no RAM above 4 GiB (see /proc/iomem)");
	if (where == PLACE_ANY || budget_pages < npages)
		budget_pages = npages;
	while (ntried < 64 && used < budget_pages) {
		uint64_t want = where == PLACE_ANY ? npages : grow;
		uint64_t *frames;
		uint8_t *base;
		uint64_t run = 0;

		if (want > PLACEMENT_CHUNK / AGENT_PAGE_SIZE)
			want = PLACEMENT_CHUNK / AGENT_PAGE_SIZE;
		if (want < npages)
			want = npages;
		if (used + want > budget_pages)
			want = budget_pages - used > npages ? budget_pages - used : npages;
		base = mmap(NULL, want * AGENT_PAGE_SIZE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (base == MAP_FAILED) {
			fail("mmap %llu pages: %s", (unsigned long long)want, strerror(errno));
			break;
		}
		tried[ntried].base = base;
		tried[ntried].len = want * AGENT_PAGE_SIZE;
		ntried++;
		used += want;
		if (mlock(base, want * AGENT_PAGE_SIZE)) {
			fail("mlock %llu bytes: %s", (unsigned long long)(want * AGENT_PAGE_SIZE),
			     strerror(errno));
			break;
		}
		/* Write every page so each has its own frame (not the shared zero page). */
		for (uint64_t i = 0; i < want; i++)
			((volatile uint8_t *)base)[i * AGENT_PAGE_SIZE] = 0;
		frames = calloc(want, sizeof(*frames));
		if (!frames) {
			fail("out of memory");
			break;
		}
		if (read_frames(base, want, frames)) {
			free(frames);
			break;
		}
		for (uint64_t i = 0; i < want; i++) {
			run = frame_fits(frames[i], where) ? run + 1 : 0;
			if (run == npages) {
				uint64_t first = i + 1 - npages;

				b->map_base = base + first * AGENT_PAGE_SIZE;
				b->map_len = npages * AGENT_PAGE_SIZE;
				b->frames = calloc(npages, sizeof(*b->frames));
				if (!b->frames) {
					ret = fail("out of memory");
					break;
				}
				memcpy(b->frames, frames + first, npages * sizeof(*frames));
				/* Keep only the chosen pages of this region. */
				if (first)
					munmap(base, first * AGENT_PAGE_SIZE);
				if (want > first + npages)
					munmap(base + (first + npages) * AGENT_PAGE_SIZE,
					       (want - first - npages) * AGENT_PAGE_SIZE);
				ntried--;
				ret = 0;
				break;
			}
		}
		free(frames);
		if (ret == 0 || run == npages)
			break;
		if (where == PLACE_ANY) {
			fail("pages of a fresh locked buffer have no frames");
			break;
		}
		grow *= 2;
	}
	if (ret && !agent_error[0])
		fail("no %llu consecutive pages %s 4 GiB found in %llu MiB of locked memory "
		     "(MemAvailable was %llu MiB)", (unsigned long long)npages,
		     where == PLACE_HIGH ? "above" : "below",
		     (unsigned long long)(used * AGENT_PAGE_SIZE >> 20),
		     (unsigned long long)(avail >> 20));
	for (int i = 0; i < ntried; i++)
		munmap(tried[i].base, tried[i].len);
	return ret;
}

int buffer_alloc(const char *name, uint64_t size, uint64_t offset, enum placement where,
		 int merge, struct buffer **out)
{
	struct buffer *b = buffer_slot(name);
	uint64_t npages;

	if (!b)
		return -1;
	if (size == 0 || size > (1ull << 30))
		return fail("buffer size %llu out of range (1 byte to 1 GiB)", (unsigned long long)size);
	if (offset >= AGENT_PAGE_SIZE)
		return fail("offset %llu must be inside the first page (< %u)",
			    (unsigned long long)offset, AGENT_PAGE_SIZE);
	npages = (offset + size + AGENT_PAGE_SIZE - 1) / AGENT_PAGE_SIZE;
	memset(b, 0, sizeof(*b));
	if (alloc_placed(npages, where, b)) {
		free(b->frames);
		memset(b, 0, sizeof(*b));
		return -1;
	}
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->kind = BUFFER_USER;
	b->size = size;
	b->offset = offset;
	b->npages = npages;
	b->data = (uint8_t *)b->map_base + offset;
	if (build_segments(b, merge)) {
		buffer_free(name);
		return -1;
	}
	*out = b;
	return 0;
}

int buffer_phys(const char *name, uint64_t gpa, uint64_t size, struct buffer **out)
{
	struct buffer *b = buffer_slot(name);
	uint64_t base = gpa & ~(uint64_t)(AGENT_PAGE_SIZE - 1);
	int fd;
	void *map;

	if (!b)
		return -1;
	if (size == 0 || size > (1ull << 30) || gpa + size < gpa)
		return fail("physical range 0x%llx+%llu out of range", (unsigned long long)gpa,
			    (unsigned long long)size);
	fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		return fail("open /dev/mem: %s", strerror(errno));
	memset(b, 0, sizeof(*b));
	b->offset = gpa - base;
	b->npages = (b->offset + size + AGENT_PAGE_SIZE - 1) / AGENT_PAGE_SIZE;
	b->map_len = b->npages * AGENT_PAGE_SIZE;
	map = mmap(NULL, b->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);
	close(fd);
	if (map == MAP_FAILED) {
		int err = errno;

		memset(b, 0, sizeof(*b));
		return fail("mmap /dev/mem at 0x%llx (%llu bytes): %s (only ranges the kernel does not "
			    "own, such as a memmap= reserved window, are allowed)",
			    (unsigned long long)base, (unsigned long long)size, strerror(err));
	}
	b->map_base = map;
	b->frames = calloc(b->npages, sizeof(*b->frames));
	if (!b->frames) {
		munmap(map, b->map_len);
		memset(b, 0, sizeof(*b));
		return fail("out of memory");
	}
	for (uint64_t i = 0; i < b->npages; i++)
		b->frames[i] = base + i * AGENT_PAGE_SIZE;
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->kind = BUFFER_PHYS;
	b->size = size;
	b->data = (uint8_t *)map + b->offset;
	if (build_segments(b, 1)) {
		buffer_free(name);
		return -1;
	}
	*out = b;
	return 0;
}

int buffer_free(const char *name)
{
	struct buffer *b = buffer_find(name);

	if (!b)
		return fail("no buffer named '%s'", name);
	munmap(b->map_base, b->map_len);
	free(b->frames);
	free(b->segs.seg);
	memset(b, 0, sizeof(*b));
	return 0;
}

void buffer_report(struct json *j, const struct buffer *b)
{
	uint64_t lowest = UINT64_MAX, highest = 0;

	json_kstr(j, "name", b->name);
	json_kstr(j, "kind", b->kind == BUFFER_USER ? "user" : "phys");
	json_kuint(j, "va", (uintptr_t)b->data);
	json_kuint(j, "size", b->size);
	json_kuint(j, "offset", b->offset);
	json_kuint(j, "gpa", b->segs.seg[0].gpa);
	json_key(j, "frames");
	json_begin_array(j);
	for (uint64_t i = 0; i < b->npages; i++)
		json_uint(j, b->frames[i]);
	json_end_array(j);
	json_key(j, "segments");
	json_begin_array(j);
	for (uint32_t i = 0; i < b->segs.count; i++) {
		const struct wh_segment *s = &b->segs.seg[i];

		json_begin_object(j);
		json_kuint(j, "gpa", s->gpa);
		json_kuint(j, "length", s->length);
		json_end_object(j);
		if (s->gpa < lowest)
			lowest = s->gpa;
		if (s->gpa + s->length > highest)
			highest = s->gpa + s->length;
	}
	json_end_array(j);
	json_kuint(j, "lowest_gpa", lowest);
	json_kuint(j, "highest_gpa_end", highest);
	json_kbool(j, "above_4g", lowest >= FOUR_GIB);
	json_kbool(j, "below_4g", highest <= FOUR_GIB);
}

/*
 * The test pattern: byte i of a buffer filled with seed s. Not periodic in
 * any page-sized stride, so a misplaced page or offset shows. The host side
 * computes the same function (orchestrator/agent_client.py pattern_bytes).
 */
uint8_t pattern_byte(uint32_t seed, uint64_t index)
{
	uint32_t v = (uint32_t)index + seed * 0x9E3779B1u;

	v *= 0x85EBCA6Bu;
	v ^= v >> 13;
	v *= 0xC2B2AE35u;
	return (uint8_t)(v >> 24);
}

void pattern_fill(uint8_t *p, uint64_t n, uint32_t seed, uint64_t index0)
{
	for (uint64_t i = 0; i < n; i++)
		p[i] = pattern_byte(seed, index0 + i);
}

uint64_t pattern_check(const volatile uint8_t *p, uint64_t n, uint32_t seed, uint64_t index0,
		       uint64_t *mismatches)
{
	uint64_t first = n, count = 0;

	for (uint64_t i = 0; i < n; i++) {
		if (p[i] != pattern_byte(seed, index0 + i)) {
			if (first == n)
				first = i;
			count++;
		}
	}
	if (mismatches)
		*mismatches = count;
	return first;
}
