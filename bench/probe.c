/*
 * Benchmark probe: the service every supervisor runs in bench/run.mjs.
 *
 * It is a C program, not a script, so that a restart costs one exec and nothing else: the
 * latency we measure is the supervisor's, not an interpreter's start-up.
 *
 *   probe restart LOG COUNT READY_FD [MIN_LIFE_NS CYCLE_NS SLOT_NS]
 *       Restart-latency mode. Takes a CLOCK_MONOTONIC timestamp first thing, signals readiness
 *       on READY_FD (-1: none), takes a second timestamp and appends one fixed-width record
 *       "<start_ns> <exit_ns>\n" to LOG, then _exit(0). The record count in LOG is the run
 *       number, so after COUNT recorded runs the probe stops dying and just sleeps: the
 *       supervisor is left idle until the benchmark stops it, and every supervisor produces
 *       exactly COUNT samples.
 *       With MIN_LIFE_NS, the probe first stays up at least that long and then until the next
 *       instant t with t mod CYCLE_NS == SLOT_NS. s6 and runit hold back a restart of a service
 *       that lived less than one second; a life of over a second measures their restart path
 *       without that throttle, and distinct slots keep several such services from dying at
 *       the same moment (so one run collects many samples in little time without overlap).
 *
 *   probe hold UPLOG FIFO READY_FD
 *       Long-sleep mode, for the memory and start/stop runs. Opens FIFO for writing and keeps it
 *       open for its whole life (the benchmark holds the read end: it sees end-of-file exactly
 *       when the last service has exited), signals readiness, appends "<pid> <start_ns>\n" to
 *       UPLOG (the benchmark counts these lines to know every service is running), then sleeps
 *       until a signal with the default action (SIGTERM) ends it.
 *
 *   probe watch FIFO
 *       Stop-time helper, run by the benchmark itself. Opens FIFO for reading (non-blocking, so
 *       that the services can open their write ends), prints "ready", waits for a line on stdin
 *       (every service is up: all write ends are open), then blocks until end-of-file, which
 *       the kernel reports when the last writer - the last service - has exited. Prints the
 *       CLOCK_MONOTONIC time of that moment in ns, the clock Node's process.hrtime() reads.
 *
 *   probe supervise N PROGRAM ARGS-FILE...
 *       The floor: the least a supervisor can do. Starts N services (PROGRAM with the arguments
 *       in each ARGS-FILE, one per line, like ./probe.args), each in a new session, and restarts
 *       any that exits at once: waitpid, fork, exec, nothing else. No readiness.
 *
 * s6 and runit start "./run" in the service directory with no arguments of ours, so when the
 * probe is started under the name "run" it reads its arguments from "./probe.args" (one per
 * line). A symlink run -> probe keeps their path to one exec as well.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 10
/* Two 20-digit numbers, a space and a newline: fixed so that file size / RECORD_LEN = runs. */
#define RECORD_LEN 42

static unsigned long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static _Noreturn void die(const char *what) {
  fprintf(stderr, "probe: %s: %s\n", what, strerror(errno));
  _exit(111);
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    buf += n;
    len -= (size_t)n;
  }
}

static void signal_ready(int ready_fd) {
  if (ready_fd < 0) return;
  write_all(ready_fd, "\n", 1);
  close(ready_fd);
}

static _Noreturn void sleep_forever(void) {
  for (;;) pause();
}

/* Reads an args file into argv-style pointers after out[0] = argv0. Returns the count. The
 * strings live in a buffer of their own, so each call needs a distinct `text`. */
static int read_args_file(const char *file, const char *argv0, char *text, size_t text_size, char **out, int max) {
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open probe.args");
  ssize_t len = read(fd, text, text_size - 1);
  if (len < 0) die("read probe.args");
  close(fd);
  text[len] = '\0';
  int count = 0;
  out[count++] = (char *)argv0;
  for (char *line = strtok(text, "\n"); line && count < max - 1; line = strtok(NULL, "\n")) out[count++] = line;
  out[count] = NULL;
  return count;
}

static int args_from_file(char **out, int max) {
  static char text[4096];
  return read_args_file("probe.args", "run", text, sizeof text, out, max);
}

struct child {
  pid_t pid;
  char *argv[MAX_ARGS];
  char text[4096];
};

static pid_t spawn_child(struct child *child) {
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    setsid();
    execv(child->argv[0], child->argv);
    _exit(127);
  }
  return pid;
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

static _Noreturn void supervise_mode(int count, const char *program, char **args_files) {
  /* SIGTERM: stop the services, then exit. No SA_RESTART, so it interrupts waitpid(). */
  struct sigaction action = {.sa_handler = on_stop_signal};
  sigaction(SIGTERM, &action, NULL);
  struct child *children = calloc((size_t)count, sizeof *children);
  if (!children) die("calloc");
  for (int i = 0; i < count; i++) {
    read_args_file(args_files[i], program, children[i].text, sizeof children[i].text, children[i].argv, MAX_ARGS);
    children[i].pid = spawn_child(&children[i]);
  }
  for (;;) {
    int status;
    if (stop_requested) {
      for (int i = 0; i < count; i++) kill(children[i].pid, SIGTERM);
      while (wait(&status) > 0 || errno == EINTR) {
      }
      _exit(0);
    }
    pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      die("waitpid");
    }
    for (int i = 0; i < count; i++)
      if (children[i].pid == pid) children[i].pid = spawn_child(&children[i]);
  }
}

/* Sleeps until the first instant >= start_ns + min_life_ns that falls on slot_ns in the cycle. */
static void live_until_slot(unsigned long long start_ns, unsigned long long min_life_ns, unsigned long long cycle_ns,
                            unsigned long long slot_ns) {
  unsigned long long earliest = start_ns + min_life_ns;
  unsigned long long target = earliest - earliest % cycle_ns + slot_ns;
  if (target < earliest) target += cycle_ns;
  struct timespec ts = {.tv_sec = (time_t)(target / 1000000000ULL), .tv_nsec = (long)(target % 1000000000ULL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static int restart_mode(unsigned long long start_ns, const char *log_path, long count, int ready_fd,
                        unsigned long long min_life_ns, unsigned long long cycle_ns, unsigned long long slot_ns) {
  int log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log_fd < 0) die("open log");
  struct stat st;
  if (fstat(log_fd, &st) < 0) die("fstat log");
  signal_ready(ready_fd);
  if (st.st_size / RECORD_LEN >= count) sleep_forever(); /* enough samples: stay up, idle */
  if (min_life_ns > 0 && cycle_ns > 0) live_until_slot(start_ns, min_life_ns, cycle_ns, slot_ns % cycle_ns);
  char record[RECORD_LEN + 1];
  unsigned long long exit_ns = now_ns();
  snprintf(record, sizeof record, "%020llu %020llu\n", start_ns, exit_ns);
  write_all(log_fd, record, RECORD_LEN);
  _exit(0);
}

static int hold_mode(unsigned long long start_ns, const char *up_path, const char *fifo_path, int ready_fd) {
  /* O_NONBLOCK: with no reader, fail at once (ENXIO) rather than hang the service. */
  int fifo_fd = open(fifo_path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (fifo_fd < 0) die("open fifo");
  signal_ready(ready_fd);
  int up_fd = open(up_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (up_fd < 0) die("open up log");
  char record[64];
  int len = snprintf(record, sizeof record, "%d %llu\n", (int)getpid(), start_ns);
  write_all(up_fd, record, (size_t)len);
  close(up_fd);
  sleep_forever();
  return 0;
}

static int watch_mode(const char *fifo_path) {
  int fd = open(fifo_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) die("open fifo");
  printf("ready\n");
  fflush(stdout);
  char line[16];
  if (!fgets(line, sizeof line, stdin)) return 1; /* the benchmark gave up: no measurement */
  /* Blocking from here on: with writers connected, read() returns 0 only once all are gone. */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  char buf[64];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  printf("%llu\n", now_ns());
  return 0;
}

static unsigned long long arg_ull(int argc, char **argv, int index) {
  return index < argc ? strtoull(argv[index], NULL, 10) : 0;
}

int main(int argc, char **argv) {
  unsigned long long start_ns = now_ns();
  char *file_args[MAX_ARGS];
  const char *self = strrchr(argv[0], '/');
  self = self ? self + 1 : argv[0];
  if (strcmp(self, "run") == 0) {
    argc = args_from_file(file_args, MAX_ARGS);
    argv = file_args;
  }
  if ((argc == 5 || argc == 8) && strcmp(argv[1], "restart") == 0)
    return restart_mode(start_ns, argv[2], strtol(argv[3], NULL, 10), atoi(argv[4]), arg_ull(argc, argv, 5),
                        arg_ull(argc, argv, 6), arg_ull(argc, argv, 7));
  if (argc == 5 && strcmp(argv[1], "hold") == 0) return hold_mode(start_ns, argv[2], argv[3], atoi(argv[4]));
  if (argc == 3 && strcmp(argv[1], "watch") == 0) return watch_mode(argv[2]);
  if (argc >= 4 && strcmp(argv[1], "supervise") == 0 && atoi(argv[2]) == argc - 4)
    supervise_mode(atoi(argv[2]), argv[3], argv + 4);
  fprintf(stderr,
          "usage: probe restart LOG COUNT READY_FD [MIN_LIFE_NS CYCLE_NS SLOT_NS]\n"
          "       probe hold UPLOG FIFO READY_FD\n"
          "       probe watch FIFO\n"
          "       probe supervise N PROGRAM ARGS-FILE...\n");
  return 100;
}
