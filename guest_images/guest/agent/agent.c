/*
 * wdfhil-agent: the guest's side of the wdfhil device tests.
 *
 * Buffers and the device mapping live as long as the process, so the agent
 * offers three ways to run commands (see commands.c for the commands):
 *   wdfhil-agent CMD ARGS...          one command, one JSON object
 *   wdfhil-agent run 'CMD; CMD; ...'  a whole scenario step in one process
 *   wdfhil-agent serve [--fifo DIR]   a long-lived process answering one JSON
 *                                     line per command line, on stdin/stdout
 *                                     or over the FIFOs DIR/request and
 *                                     DIR/response (for callers that can
 *                                     only run short commands)
 *   wdfhil-agent call DIR 'CMD'       one request to a FIFO server
 *   wdfhil-agent relay TTY READY      the host's command channel on a serial
 *                                     port (relay.c), started by init
 * Exit status: 0 when every command succeeded, 1 when one failed, 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "agent.h"

#define FIFO_REQUEST "request"
#define FIFO_RESPONSE "response"
#define FIFO_PID "pid"
#define REQUEST_MAX (64 * 1024)
#define CALL_TIMEOUT_MS 120000
#define RESPONSE_OPEN_TIMEOUT_MS 10000

static void usage(void)
{
	fputs("usage: wdfhil-agent [--dev PATH] COMMAND ARGS...\n"
	      "       wdfhil-agent [--dev PATH] run 'COMMAND ARGS; COMMAND ARGS; ...'\n"
	      "       wdfhil-agent [--dev PATH] serve [--fifo DIR]\n"
	      "       wdfhil-agent call DIR 'COMMAND ARGS' [--timeout MS]\n"
	      "       wdfhil-agent relay TTY READY_FILE\n"
	      "       wdfhil-agent help   (lists the commands as JSON)\n", stderr);
}

static char *join(int argc, char **argv)
{
	size_t len = 1;
	char *s;

	for (int i = 0; i < argc; i++)
		len += strlen(argv[i]) + 1;
	s = calloc(1, len);
	if (!s)
		return NULL;
	for (int i = 0; i < argc; i++) {
		if (i)
			strcat(s, " ");
		strcat(s, argv[i]);
	}
	return s;
}

static void print_json(struct json *j)
{
	fputs(j->buf, stdout);
	fputc('\n', stdout);
	fflush(stdout);
}

static int run_one(const char *line)
{
	struct json j;
	int ret;

	json_init(&j);
	ret = command_run_line(line, &j);
	print_json(&j);
	json_free(&j);
	return ret ? 1 : 0;
}

/* Steps separated by ';' or newlines, in one process; stops at the first failure. */
static int run_steps(char *script)
{
	struct json j;
	char *save = NULL;
	int step = 0, failed = -1;

	json_init(&j);
	json_begin_object(&j);
	json_key(&j, "results");
	json_begin_array(&j);
	for (char *s = strtok_r(script, ";\n", &save); s; s = strtok_r(NULL, ";\n", &save)) {
		if (strspn(s, " \t\r") == strlen(s))
			continue;
		if (command_run_line(s, &j)) {
			failed = step;
			break;
		}
		step++;
	}
	json_end_array(&j);
	json_kbool(&j, "ok", failed < 0);
	if (failed >= 0) {
		json_kint(&j, "failed_step", failed);
		json_kstr(&j, "error", agent_error);
	}
	json_end_object(&j);
	print_json(&j);
	json_free(&j);
	return failed < 0 ? 0 : 1;
}

static int is_quit(const char *line)
{
	char word[16] = "";

	sscanf(line, "%15s", word);
	return strcmp(word, "quit") == 0 || strcmp(word, "exit") == 0;
}

static int is_blank(const char *line)
{
	return strspn(line, " \t\r\n") == strlen(line);
}

static int serve_stdio(void)
{
	char *line = NULL;
	size_t cap = 0;

	while (getline(&line, &cap, stdin) >= 0) {
		if (is_blank(line))
			continue;
		if (is_quit(line)) {
			fputs("{\"cmd\": \"quit\", \"ok\": true}\n", stdout);
			fflush(stdout);
			break;
		}
		run_one(line);
	}
	free(line);
	return 0;
}

static void fifo_path(char *out, size_t n, const char *dir, const char *name)
{
	snprintf(out, n, "%s/%s", dir, name);
}

static int write_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(fd, s, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

static void sleep_ms(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&t, NULL);
}

/* Opens a FIFO for writing once its reader is there (ENXIO until then). */
static int open_writer(const char *path, int timeout_ms, pid_t peer)
{
	double deadline = monotonic_us() + timeout_ms * 1000.0;

	for (;;) {
		int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);

		if (fd >= 0) {
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
			return fd;
		}
		if (errno != ENXIO && errno != ENOENT)
			return -1;
		if (peer > 0 && kill(peer, 0) && errno == ESRCH) {
			errno = ESRCH;
			return -1;
		}
		if (monotonic_us() > deadline) {
			errno = ETIMEDOUT;
			return -1;
		}
		sleep_ms(1);
	}
}

static void serve_fifo_cleanup(const char *dir)
{
	char path[512];

	fifo_path(path, sizeof(path), dir, FIFO_REQUEST);
	unlink(path);
	fifo_path(path, sizeof(path), dir, FIFO_RESPONSE);
	unlink(path);
	fifo_path(path, sizeof(path), dir, FIFO_PID);
	unlink(path);
	rmdir(dir);
}

static int serve_fifo(const char *dir)
{
	char req[512], resp[512], pidf[512];
	char *line = malloc(REQUEST_MAX + 1);
	FILE *f;

	if (!line)
		return 1;
	if (mkdir(dir, 0700) && errno != EEXIST) {
		fprintf(stderr, "wdfhil-agent: mkdir %s: %s\n", dir, strerror(errno));
		return 1;
	}
	fifo_path(req, sizeof(req), dir, FIFO_REQUEST);
	fifo_path(resp, sizeof(resp), dir, FIFO_RESPONSE);
	fifo_path(pidf, sizeof(pidf), dir, FIFO_PID);
	unlink(req);
	unlink(resp);
	if (mkfifo(req, 0600) || mkfifo(resp, 0600)) {
		fprintf(stderr, "wdfhil-agent: mkfifo in %s: %s\n", dir, strerror(errno));
		return 1;
	}
	f = fopen(pidf, "w");
	if (!f) {
		fprintf(stderr, "wdfhil-agent: %s: %s\n", pidf, strerror(errno));
		return 1;
	}
	fprintf(f, "%d\n", (int)getpid());
	fclose(f);
	for (;;) {
		size_t len = 0;
		ssize_t n;
		int fd = open(req, O_RDONLY | O_CLOEXEC);
		struct json j;
		int quit;

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "wdfhil-agent: open %s: %s\n", req, strerror(errno));
			break;
		}
		while (len < REQUEST_MAX && (n = read(fd, line + len, REQUEST_MAX - len)) != 0) {
			if (n < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			len += (size_t)n;
		}
		close(fd);
		line[len] = '\0';
		if (is_blank(line))
			continue;
		json_init(&j);
		quit = is_quit(line);
		if (quit) {
			json_begin_object(&j);
			json_kstr(&j, "cmd", "quit");
			json_kbool(&j, "ok", 1);
			json_end_object(&j);
		} else {
			command_run_line(line, &j);
		}
		fd = open_writer(resp, RESPONSE_OPEN_TIMEOUT_MS, 0);
		if (fd >= 0) {
			write_all(fd, j.buf, j.len);
			write_all(fd, "\n", 1);
			close(fd);
		} else {
			fprintf(stderr, "wdfhil-agent: nobody read the response to '%s'\n", line);
		}
		json_free(&j);
		if (quit)
			break;
	}
	free(line);
	serve_fifo_cleanup(dir);
	return 0;
}

static int call_error(const char *fmt, const char *a, const char *b)
{
	struct json j;
	char msg[600];

	snprintf(msg, sizeof(msg), fmt, a, b);
	json_init(&j);
	json_begin_object(&j);
	json_kbool(&j, "ok", 0);
	json_kstr(&j, "error", msg);
	json_end_object(&j);
	print_json(&j);
	json_free(&j);
	return 1;
}

/* One request to a FIFO server; prints its answer. */
static int call(const char *dir, const char *line, int timeout_ms)
{
	char req[512], resp[512], pidf[512], *out = NULL;
	size_t len = 0, cap = 0;
	double deadline = monotonic_us() + timeout_ms * 1000.0;
	pid_t pid = 0;
	FILE *f;
	int fd;

	fifo_path(req, sizeof(req), dir, FIFO_REQUEST);
	fifo_path(resp, sizeof(resp), dir, FIFO_RESPONSE);
	fifo_path(pidf, sizeof(pidf), dir, FIFO_PID);
	f = fopen(pidf, "r");
	if (f) {
		int p;

		if (fscanf(f, "%d", &p) == 1)
			pid = p;
		fclose(f);
	}
	fd = open_writer(req, timeout_ms, pid);
	if (fd < 0)
		return call_error("no agent serving in %s: %s", dir,
				  errno == ESRCH ? "the server process is gone" : strerror(errno));
	if (write_all(fd, line, strlen(line))) {
		close(fd);
		return call_error("writing the request to %s: %s", dir, strerror(errno));
	}
	close(fd);
	fd = open(resp, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return call_error("open %s: %s", resp, strerror(errno));
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n = poll(&p, 1, 100);
		ssize_t r;

		if (n < 0 && errno != EINTR)
			break;
		if (n <= 0) {
			if (pid > 0 && kill(pid, 0) && errno == ESRCH) {
				close(fd);
				return call_error("the agent serving in %s died%s", dir, "");
			}
			if (monotonic_us() > deadline) {
				close(fd);
				return call_error("no answer from the agent in %s within the timeout%s", dir, "");
			}
			continue;
		}
		if (cap - len < 4097) {
			cap = cap ? cap * 2 : 65536;
			out = realloc(out, cap);
			if (!out)
				return call_error("out of memory%s%s", "", "");
		}
		r = read(fd, out + len, cap - len - 1);
		if (r == 0)
			break;
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			break;
		}
		len += (size_t)r;
	}
	close(fd);
	if (!out)
		return call_error("empty answer from the agent in %s%s", dir, "");
	out[len] = '\0';
	fputs(out, stdout);
	fflush(stdout);
	{
		const char *ok = strstr(out, "\"ok\": ");
		int good = ok && strncmp(ok + 6, "true", 4) == 0;

		free(out);
		return good ? 0 : 1;
	}
}

int main(int argc, char **argv)
{
	int i = 1;

	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };

	signal(SIGPIPE, SIG_IGN);
	/* Buffers are mlock'ed; root may lift the default 8 MiB limit (failure shows at mlock). */
	setrlimit(RLIMIT_MEMLOCK, &unlimited);
	if (i + 1 < argc && strcmp(argv[i], "--dev") == 0) {
		device_set_default(argv[i + 1]);
		i += 2;
	}
	if (i >= argc) {
		usage();
		return 2;
	}
	if (strcmp(argv[i], "help") == 0 || strcmp(argv[i], "--help") == 0) {
		return run_one("help");
	}
	if (strcmp(argv[i], "run") == 0) {
		char *script = join(argc - i - 1, argv + i + 1);

		return script ? run_steps(script) : 1;
	}
	if (strcmp(argv[i], "serve") == 0) {
		if (i + 1 == argc)
			return serve_stdio();
		if (i + 3 == argc && strcmp(argv[i + 1], "--fifo") == 0)
			return serve_fifo(argv[i + 2]);
		usage();
		return 2;
	}
	if (strcmp(argv[i], "relay") == 0) {
		if (i + 3 != argc) {
			usage();
			return 2;
		}
		return relay_main(argv[i + 1], argv[i + 2]);
	}
	if (strcmp(argv[i], "call") == 0) {
		int timeout_ms = CALL_TIMEOUT_MS;
		char *line;

		if (argc - i >= 5 && strcmp(argv[argc - 2], "--timeout") == 0) {
			uint64_t t;

			if (parse_u64(argv[argc - 1], &t) || t == 0 || t > 86400000) {
				usage();
				return 2;
			}
			timeout_ms = (int)t;
			argc -= 2;
		}
		if (argc - i < 3) {
			usage();
			return 2;
		}
		line = join(argc - i - 2, argv + i + 2);
		return line ? call(argv[i + 1], line, timeout_ms) : 1;
	}
	{
		char *line = join(argc - i, argv + i);

		return line ? run_one(line) : 1;
	}
}
