/* A tiny JSON writer: the agent prints machine-readable answers only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "agent.h"

static void put(struct json *j, const char *s, size_t n)
{
	if (j->len + n + 1 > j->cap) {
		size_t cap = j->cap ? j->cap : 4096;

		while (cap < j->len + n + 1)
			cap *= 2;
		j->buf = realloc(j->buf, cap);
		if (!j->buf) {
			fputs("{\"ok\": false, \"error\": \"out of memory\"}\n", stdout);
			exit(1);
		}
		j->cap = cap;
	}
	memcpy(j->buf + j->len, s, n);
	j->len += n;
	j->buf[j->len] = '\0';
}

static void puts_(struct json *j, const char *s)
{
	put(j, s, strlen(s));
}

void json_init(struct json *j)
{
	memset(j, 0, sizeof(*j));
	j->first[0] = 1;
	put(j, "", 0);
}

void json_free(struct json *j)
{
	free(j->buf);
	memset(j, 0, sizeof(*j));
}

void json_truncate(struct json *j, size_t len, int depth)
{
	if (len < j->len) {
		j->len = len;
		j->buf[len] = '\0';
	}
	j->depth = depth;
}

static void emit_string(struct json *j, const char *s);

/* Before a value (or key) at the current level: a comma unless it is the first. */
static void separate(struct json *j)
{
	if (!j->first[j->depth])
		puts_(j, ", ");
	j->first[j->depth] = 0;
}

void json_key(struct json *j, const char *key)
{
	separate(j);
	emit_string(j, key);
	puts_(j, ": ");
	j->first[j->depth] = 2;	/* the value that follows needs no comma */
}

static void value_prefix(struct json *j)
{
	if (j->first[j->depth] == 2)
		j->first[j->depth] = 0;
	else
		separate(j);
}

static void open_(struct json *j, const char *c)
{
	value_prefix(j);
	puts_(j, c);
	if (j->depth + 1 < (int)sizeof(j->first))
		j->depth++;
	j->first[j->depth] = 1;
}

static void close_(struct json *j, const char *c)
{
	if (j->depth > 0)
		j->depth--;
	puts_(j, c);
}

void json_begin_object(struct json *j) { open_(j, "{"); }
void json_end_object(struct json *j) { close_(j, "}"); }
void json_begin_array(struct json *j) { open_(j, "["); }
void json_end_array(struct json *j) { close_(j, "]"); }

static void emit_string(struct json *j, const char *s)
{
	char esc[8];

	puts_(j, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(j, esc, 2);
		} else if (c < 0x20 || c >= 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			puts_(j, esc);
		} else {
			put(j, (const char *)&c, 1);
		}
	}
	puts_(j, "\"");
}

void json_string(struct json *j, const char *s)
{
	value_prefix(j);
	emit_string(j, s);
}

void json_uint(struct json *j, uint64_t v)
{
	char tmp[32];

	value_prefix(j);
	snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
	puts_(j, tmp);
}

void json_int(struct json *j, int64_t v)
{
	char tmp[32];

	value_prefix(j);
	snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
	puts_(j, tmp);
}

void json_double(struct json *j, double v)
{
	char tmp[64];

	value_prefix(j);
	snprintf(tmp, sizeof(tmp), "%.3f", v);
	puts_(j, tmp);
}

void json_bool(struct json *j, int v)
{
	value_prefix(j);
	puts_(j, v ? "true" : "false");
}

void json_kstr(struct json *j, const char *key, const char *s) { json_key(j, key); json_string(j, s); }
void json_kuint(struct json *j, const char *key, uint64_t v) { json_key(j, key); json_uint(j, v); }
void json_kint(struct json *j, const char *key, int64_t v) { json_key(j, key); json_int(j, v); }
void json_kdouble(struct json *j, const char *key, double v) { json_key(j, key); json_double(j, v); }
void json_kbool(struct json *j, const char *key, int v) { json_key(j, key); json_bool(j, v); }
