/*
 * wdfhil-agent relay DEVICE READY_FILE: the host's command channel on a serial port.
 *
 * Why: a guest restored from a saved state must log in again over SSH before its
 * first command, and under TCG that login (key exchange, a fork of dropbear, all of
 * it through a cold translation cache) costs ~0.3-0.4 s. This relay was already
 * waiting on its serial port when the guest was saved, so it answers the restored
 * guest's first command at once. It runs one shell at a time for the host, the way
 * an SSH exec channel does: the host starts it with a command line, feeds its stdin,
 * gets its stdout and stderr apart, then its exit status (orchestrator/serial_shell.py
 * is the other end; docs/guest-side.md has the protocol).
 *
 * A serial port carries ~400 KB/s under TCG (one QEMU write per byte), a tenth of
 * an SSH channel, so when the host can read guest RAM (it always can: RAM is a
 * shared file) output goes through a ring in this process's locked memory instead,
 * and the serial line carries only where each piece is ("bulk" output).
 *
 * Frames, both ways: 'W', type, u32 shell id, u32 payload length (little endian),
 * payload (at most RELAY_PAYLOAD_MAX bytes).
 *   host -> guest  'S' sync: drop the current shell; answer 'S' with the same id
 *                      and payload (16-byte nonce, u32 flags[, u64 seconds, u32
 *                      nanoseconds]), so the host knows where the stream restarts.
 *                      Flags: 1 asks for bulk output, answered by a 'B' frame (u32
 *                      ring size, then the u64 guest-physical address of each of its
 *                      pages) when the ring could be set up; 2 keeps the current
 *                      shell for the next 'X' to adopt; 4 sets the clock to the time
 *                      given (a restored guest's clock stands where it was saved)
 *                  'X' exec: start "/bin/sh -c PAYLOAD" as shell ID (dropping any
 *                      other), or adopt the shell kept by the sync as shell ID
 *                  'I' input: PAYLOAD to shell ID's stdin; an empty one closes it
 *                  'C' close: close shell ID's pipes (it gets EOF; nothing is killed)
 *                  'A' ack of bulk output: u64 bytes of the ring consumed in all
 *   guest -> host  'S' the sync answer, 'B' the bulk ring, 'O' stdout, 'E' stderr
 *                  bytes of shell ID, 'o' / 'e' the same in the ring (u32 offset,
 *                  u32 length), 'Z' shell ID exited (payload: i32 status, 128+N for
 *                  signal N), 'F' shell ID could not start (payload: why)
 * Frames for a shell that is no longer the current one are ignored (either way). A
 * header with another magic, an unknown type or an oversize length is skipped byte by
 * byte up to the next 'W', so a stream cut in the middle of a frame recovers.
 */
#define _GNU_SOURCE   /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include "agent.h"

#define RELAY_MAGIC 'W'
#define RELAY_HEADER 10
#define RELAY_PAYLOAD_MAX (1 << 20)
#define RELAY_CHUNK 4096
#define RELAY_RING_SIZE (256 * 1024)
#define RELAY_RING_PIECE (64 * 1024)
#define RELAY_SYNC_BULK 1u
#define RELAY_SYNC_ADOPT 2u
#define RELAY_SYNC_CLOCK 4u

struct relay_shell {
	pid_t pid;       /* 0: none */
	uint32_t id;
	int in, out, err;    /* our ends of its pipes; -1 when closed */
	int exited;      /* reaped; status below */
	int status;
};

static int tty = -1;
static struct relay_shell shell = { 0, 0, -1, -1, -1, 0, 0 };
/* The sync kept the shell: the next 'X' adopts it. In a guest saved between two
 * commands, the shell is idle; adopting it spares the restored guest a fork and an
 * exec through TCG's empty translation cache (~0.15 s). */
static int adoptable;

/* The bulk ring: written at head, consumed by the host up to tail (totals). */
static struct {
	unsigned char *data;     /* NULL: could not be set up (serial only) */
	uint64_t pages[RELAY_RING_SIZE / AGENT_PAGE_SIZE];
	int on;                  /* the host asked for it at the last sync */
	uint64_t head, tail;
} ring;

static void put_u32(unsigned char *p, uint32_t v)
{
	p[0] = v & 0xff;
	p[1] = (v >> 8) & 0xff;
	p[2] = (v >> 16) & 0xff;
	p[3] = (v >> 24) & 0xff;
}

static uint32_t get_u32(const unsigned char *p)
{
	return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get_u64(const unsigned char *p)
{
	return get_u32(p) | ((uint64_t)get_u32(p + 4) << 32);
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void send_frame(char type, uint32_t id, const void *data, uint32_t len)
{
	unsigned char head[RELAY_HEADER] = { RELAY_MAGIC, (unsigned char)type };

	put_u32(head + 2, id);
	put_u32(head + 6, len);
	/* the serial line is our only way out: a failed write cannot be reported */
	if (write_all(tty, head, sizeof(head)) == 0 && len)
		write_all(tty, data, len);
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* Forget the current shell: its pipes close (it reads EOF, its writes fail); the
 * process is reaped whenever it exits (reap_children), as an SSH server leaves it. */
static void drop_shell(void)
{
	close_fd(&shell.in);
	close_fd(&shell.out);
	close_fd(&shell.err);
	shell.pid = 0;
	shell.exited = 0;
}

static void start_shell(uint32_t id, const char *command, const sigset_t *blocked)
{
	int in[2], out[2], err[2];
	pid_t pid;

	drop_shell();
	shell.id = id;
	if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		const char *why = strerror(errno);

		send_frame('F', id, why, (uint32_t)strlen(why));
		return;
	}
	pid = fork();
	if (pid == 0) {
		/* init starts the relay as root, the image's only user (getpwuid would need
		 * glibc's NSS libraries beside this static program) */
		const char *home = "/root";

		sigprocmask(SIG_UNBLOCK, blocked, NULL);
		signal(SIGPIPE, SIG_DFL);   /* ignored by the agent; a shell expects the default */
		setsid();
		dup2(in[0], 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		setenv("HOME", home, 1);
		setenv("USER", "root", 1);
		setenv("LOGNAME", "root", 1);
		setenv("SHELL", "/bin/sh", 1);
		if (chdir(home))
			chdir("/");
		execl("/bin/sh", "sh", "-c", command, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	if (pid < 0) {
		const char *why = strerror(errno);

		close(in[1]);
		close(out[0]);
		close(err[0]);
		send_frame('F', id, why, (uint32_t)strlen(why));
		return;
	}
	shell.pid = pid;
	shell.in = in[1];
	shell.out = out[0];
	shell.err = err[0];
	shell.exited = 0;
}

/* Locked memory for the bulk ring and its pages' guest-physical addresses. */
static void ring_setup(void)
{
	unsigned char *data = mmap(NULL, RELAY_RING_SIZE, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED, -1, 0);

	if (data == MAP_FAILED)
		return;
	memset(data, 0, RELAY_RING_SIZE);
	for (size_t i = 0; i < RELAY_RING_SIZE / AGENT_PAGE_SIZE; i++)
		if (virt_to_gpa(data + i * AGENT_PAGE_SIZE, &ring.pages[i])) {
			munmap(data, RELAY_RING_SIZE);
			return;
		}
	ring.data = data;
}

static void ring_announce(void)
{
	unsigned char frame[4 + sizeof(ring.pages)];

	put_u32(frame, RELAY_RING_SIZE);
	for (size_t i = 0; i < RELAY_RING_SIZE / AGENT_PAGE_SIZE; i++) {
		put_u32(frame + 4 + 8 * i, (uint32_t)ring.pages[i]);
		put_u32(frame + 8 + 8 * i, (uint32_t)(ring.pages[i] >> 32));
	}
	send_frame('B', 0, frame, sizeof(frame));
}

/* Bytes that can go into the ring at head without wrapping or overtaking tail. */
static size_t ring_room(void)
{
	size_t free_bytes = RELAY_RING_SIZE - (size_t)(ring.head - ring.tail);
	size_t to_end = RELAY_RING_SIZE - (size_t)(ring.head % RELAY_RING_SIZE);
	size_t room = free_bytes < to_end ? free_bytes : to_end;

	return room < RELAY_RING_PIECE ? room : RELAY_RING_PIECE;
}

/* Send what one of the shell's pipes has (inline, or through the ring); close it at
 * EOF. With the ring full the pipe is left alone (see relay_main's poll) until the
 * host acknowledges. */
static void forward(int *fd, char type)
{
	char buf[RELAY_CHUNK];
	ssize_t n;

	if (ring.on) {
		size_t at = (size_t)(ring.head % RELAY_RING_SIZE);
		unsigned char where[8];

		n = read(*fd, ring.data + at, ring_room());
		if (n > 0) {
			put_u32(where, (uint32_t)at);
			put_u32(where + 4, (uint32_t)n);
			ring.head += (uint64_t)n;
			send_frame(type == 'O' ? 'o' : 'e', shell.id, where, sizeof(where));
			return;
		}
	} else {
		n = read(*fd, buf, sizeof(buf));
		if (n > 0) {
			send_frame(type, shell.id, buf, (uint32_t)n);
			return;
		}
	}
	if (n == 0 || (errno != EINTR && errno != EAGAIN))
		close_fd(fd);
}

/* The shell's end is told once it exited and both its streams are drained. */
static void maybe_report_exit(void)
{
	unsigned char status[4];

	if (!shell.pid || !shell.exited || shell.out >= 0 || shell.err >= 0)
		return;
	put_u32(status, (uint32_t)shell.status);
	send_frame('Z', shell.id, status, sizeof(status));
	drop_shell();
}

static void reap_children(int sigfd)
{
	struct signalfd_siginfo info;
	int status;
	pid_t pid;

	while (read(sigfd, &info, sizeof(info)) == sizeof(info))
		;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid != shell.pid)
			continue;
		shell.exited = 1;
		shell.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	}
}

static void handle_frame(char type, uint32_t id, char *payload, uint32_t len,
			 const sigset_t *blocked)
{
	switch (type) {
	case 'S': {
		uint32_t flags = len >= 20 ? get_u32((unsigned char *)payload + 16) : 0;

		adoptable = (flags & RELAY_SYNC_ADOPT) && shell.pid && !shell.exited
			    && shell.in >= 0 && shell.out >= 0 && shell.err >= 0;
		if (!adoptable)
			drop_shell();
		if ((flags & RELAY_SYNC_CLOCK) && len >= 32) {
			struct timespec now = {
				.tv_sec = (time_t)get_u64((unsigned char *)payload + 20),
				.tv_nsec = get_u32((unsigned char *)payload + 28),
			};

			clock_settime(CLOCK_REALTIME, &now);
		}
		ring.on = ring.data && (flags & RELAY_SYNC_BULK);
		ring.head = ring.tail = 0;
		send_frame('S', id, payload, len);
		if (ring.on)
			ring_announce();
		break;
	}
	case 'A':
		if (len >= 8) {
			uint64_t tail = get_u64((unsigned char *)payload);

			if (tail <= ring.head && tail >= ring.tail)
				ring.tail = tail;
		}
		break;
	case 'X': {
		char *command;

		adoptable = adoptable && shell.pid && !shell.exited && shell.in >= 0;
		command = adoptable ? NULL : strndup(payload, len);
		if (adoptable) {
			adoptable = 0;
			shell.id = id;
		} else if (command)
			start_shell(id, command, blocked);
		else
			send_frame('F', id, "out of memory", 13);
		free(command);
		break;
	}
	case 'I':
		if (!shell.pid || id != shell.id || shell.in < 0)
			break;
		if (len == 0 || write_all(shell.in, payload, len))
			close_fd(&shell.in);
		break;
	case 'C':
		if (shell.pid && id == shell.id)
			drop_shell();
		break;
	}
}

/* Parse the frames in buf[0..*used); keep an incomplete one for later. */
static void handle_input(unsigned char *buf, size_t *used, const sigset_t *blocked)
{
	size_t at = 0;

	while (*used - at >= RELAY_HEADER) {
		unsigned char *head = buf + at;
		uint32_t len = get_u32(head + 6);

		if (head[0] != RELAY_MAGIC || !strchr("SXICA", head[1]) || head[1] == '\0'
		    || len > RELAY_PAYLOAD_MAX) {
			at++;      /* not a frame: resynchronise on the next magic */
			continue;
		}
		if (*used - at < RELAY_HEADER + (size_t)len)
			break;
		handle_frame((char)head[1], get_u32(head + 2), (char *)head + RELAY_HEADER, len,
			     blocked);
		at += RELAY_HEADER + len;
	}
	memmove(buf, buf + at, *used - at);
	*used -= at;
}

/* The receive FIFO's trigger level at its top (14 bytes): QEMU hands the UART no
 * more bytes than the level at once, so at 1 each byte cost an interrupt and a trip
 * through QEMU's main loop (~5 ms for a command), at 8 (the default) half of that.
 * The host pads each write to a multiple of RELAY_RX_TRIGGER with zeros (skipped
 * here as bytes that are not a frame's magic), so no byte waits for the FIFO
 * timeout (4 character times at 115200 baud). */
static void receive_trigger_top(const char *device)
{
	const char *name = strrchr(device, '/');
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "/sys/class/tty/%s/rx_trig_bytes", name ? name + 1 : device);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "14", 2) != 2)
			fprintf(stderr, "wdfhil-agent relay: %s: %s\n", path, strerror(errno));
		close(fd);
	}
}

static int open_raw(const char *device)
{
	struct termios mode;
	int fd = open(device, O_RDWR | O_NOCTTY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (tcgetattr(fd, &mode) == 0) {
		cfmakeraw(&mode);
		mode.c_cflag |= CLOCAL | CREAD;
		mode.c_cflag &= ~CRTSCTS;
		mode.c_cc[VMIN] = 1;
		mode.c_cc[VTIME] = 0;
		cfsetispeed(&mode, B115200);
		cfsetospeed(&mode, B115200);
		if (tcsetattr(fd, TCSAFLUSH, &mode) == 0) {
			receive_trigger_top(device);
			return fd;
		}
	}
	close(fd);
	return -1;
}

int relay_main(const char *device, const char *ready_file)
{
	unsigned char *buf = malloc(RELAY_HEADER + RELAY_PAYLOAD_MAX);
	size_t used = 0;
	sigset_t blocked;
	int sigfd, ready;

	sigemptyset(&blocked);
	sigaddset(&blocked, SIGCHLD);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	sigfd = signalfd(-1, &blocked, SFD_NONBLOCK | SFD_CLOEXEC);
	tty = open_raw(device);
	if (!buf || sigfd < 0 || tty < 0) {
		fprintf(stderr, "wdfhil-agent relay: %s: %s\n", device, strerror(errno));
		return 1;
	}
	ready = open(ready_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (ready < 0) {
		fprintf(stderr, "wdfhil-agent relay: %s: %s\n", ready_file, strerror(errno));
		return 1;
	}
	close(ready);
	ring_setup();
	for (;;) {
		int room = !ring.on || ring_room() > 0;
		struct pollfd fds[4] = {
			{ tty, POLLIN, 0 }, { sigfd, POLLIN, 0 },
			{ room ? shell.out : -1, POLLIN, 0 }, { room ? shell.err : -1, POLLIN, 0 },
		};

		if (poll(fds, 4, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		if (fds[1].revents)
			reap_children(sigfd);
		if (fds[2].revents && shell.out >= 0)
			forward(&shell.out, 'O');
		if (fds[3].revents && shell.err >= 0)
			forward(&shell.err, 'E');
		if (fds[0].revents & POLLIN) {
			ssize_t n = read(tty, buf + used, RELAY_HEADER + RELAY_PAYLOAD_MAX - used);

			if (n > 0) {
				used += (size_t)n;
				handle_input(buf, &used, &blocked);
			} else if (n < 0 && errno != EINTR && errno != EAGAIN) {
				return 1;
			}
		}
		maybe_report_exit();
	}
}
