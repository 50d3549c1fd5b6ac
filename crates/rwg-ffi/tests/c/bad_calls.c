/*
 * Calls that must fail cleanly: NULL pointers, wrong lengths, overlapping buffers, handles
 * used after they were freed (the library keeps a handle table, so these are errors, not
 * undefined behaviour), malformed configuration strings. Each gets its error code, writes
 * nothing, changes nothing, and the library keeps working. Nothing logged contains a key.
 * Needs no root: the tunnel calls fail before a TUN device would matter.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static char logged[1 << 16];
static size_t logged_len;
static int log_lines;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_log(void *context, int32_t level, const char *message) {
	CHECK(context == &log_lines);
	CHECK(level >= RWG_LOG_LEVEL_ERROR && level <= RWG_LOG_LEVEL_TRACE);
	pthread_mutex_lock(&log_lock);
	size_t n = strlen(message);
	if (logged_len + n + 1 < sizeof logged) {
		memcpy(logged + logged_len, message, n);
		logged[logged_len + n] = '\n';
		logged_len += n + 1;
		logged[logged_len] = 0;
	}
	log_lines++;
	pthread_mutex_unlock(&log_lock);
}

/* Threads that use one core until its handle goes away under them. */
#define USERS 4
static rwg_core shared_core;
static atomic_int calls_before_free;

static void *use_until_freed(void *arg) {
	(void)arg;
	uint8_t garbage[64], out[64];
	memset(garbage, 1, sizeof garbage);
	rwg_addr from;
	OK(rwg_addr_parse("192.0.2.3:3", &from));
	for (long i = 0;; i++) {
		rwg_result r;
		rwg_counters c;
		rwg_error e = i % 2 ? rwg_core_decapsulate(shared_core, 1, &from, garbage, sizeof garbage,
		                                           out, sizeof out, &r)
		                    : rwg_core_counters(shared_core, &c);
		if (e == RWG_ERROR_INVALID_HANDLE) break;
		EXPECT(RWG_ERROR_OK, e);
		atomic_fetch_add(&calls_before_free, 1);
	}
	/* Ids are never reused: once gone, always gone. */
	for (int i = 0; i < 1000; i++) EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_tick(shared_core, 1));
	return NULL;
}

/* Frees a core while threads are calling it: every call returns OK or INVALID_HANDLE, and
 * each thread stops once the handle is gone. */
static void free_while_in_use(const uint8_t *private_key) {
	OK(rwg_core_new(private_key, &shared_core));
	pthread_t users[USERS];
	for (int i = 0; i < USERS; i++) CHECK(pthread_create(&users[i], NULL, use_until_freed, NULL) == 0);
	while (atomic_load(&calls_before_free) < 1000 * USERS) sched_yield();
	OK(rwg_core_free(shared_core));
	for (int i = 0; i < USERS; i++) CHECK(pthread_join(users[i], NULL) == 0);
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_free(shared_core));
}

static int is_open(int fd) { return fcntl(fd, F_GETFD) >= 0 || errno != EBADF; }

static int dev_null(void) {
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	return fd;
}

/* A tunnel start that must fail with `want` and close the descriptor it was given. */
static void start_fails(rwg_error want, int wg_quick, const char *config) {
	int fd = dev_null();
	rwg_tunnel t = {77};
	if (wg_quick)
		EXPECT(want, rwg_tunnel_start_wg_quick(config, fd, &t));
	else
		EXPECT(want, rwg_tunnel_start(config, fd, &t));
	CHECK(t.id == 77);
	CHECK(!is_open(fd));
}

static void hex(char *out, const uint8_t *key) {
	for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", key[i]);
}

int main(void) {
	/* Error codes and messages. */
	const char *unknown = rwg_strerror(1);
	CHECK(strcmp(unknown, "unknown error code") == 0);
	CHECK(strcmp(rwg_strerror(INT32_MIN), unknown) == 0);
	for (int code = RWG_ERROR_INTERNAL; code <= RWG_ERROR_OK; code++)
		CHECK(rwg_strerror(code) != NULL && strcmp(rwg_strerror(code), unknown) != 0);
	CHECK(strcmp(rwg_strerror(RWG_ERROR_INTERNAL - 1), unknown) == 0);
	CHECK(strcmp(rwg_drop_reason_str(RWG_DROP_REASON_REPLAY), "replay") == 0);
	CHECK(strcmp(rwg_drop_reason_str(RWG_DROP_REASON_NONE), "unknown") == 0);
	CHECK(strcmp(rwg_drop_reason_str(-7), "unknown") == 0);

	OK(rwg_set_logger(on_log, &log_lines, RWG_LOG_LEVEL_TRACE));

	/* Keys. */
	uint8_t private_key[32], public_key[32], zero[32] = {0}, other[32];
	char b64[RWG_KEY_BASE64_SIZE], private_hex[65], private_b64[RWG_KEY_BASE64_SIZE];
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_generate_private_key(NULL));
	OK(rwg_generate_private_key(private_key));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_public_key(NULL, public_key));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_public_key(private_key, NULL));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_public_key(zero, public_key));
	OK(rwg_public_key(private_key, public_key));
	hex(private_hex, private_key);
	OK(rwg_key_to_base64(private_key, private_b64, sizeof private_b64));
	memset(b64, 'x', sizeof b64);
	EXPECT(RWG_ERROR_BUFFER_TOO_SMALL, rwg_key_to_base64(public_key, b64, 44));
	CHECK(b64[0] == 'x' && b64[43] == 'x');
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_key_to_base64(public_key, NULL, 45));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_key_to_base64(NULL, b64, 45));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_key_from_base64("c2hvcnQ=", other));
	/* 44 characters but the last one before '=' has bits a 32-byte key cannot have. */
	EXPECT(RWG_ERROR_INVALID_ARGUMENT,
	       rwg_key_from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", other));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_key_from_base64("\xff\xfe", other));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_key_from_base64(NULL, other));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_key_from_base64(private_b64, NULL));

	/* Addresses. */
	rwg_addr addr;
	memset(&addr, 0x5a, sizeof addr);
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_addr_parse("nonsense", &addr));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_addr_parse("192.0.2.1", &addr));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_addr_parse("192.0.2.1:70000", &addr));
	CHECK(addr.family == 0x5a);
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_addr_parse(NULL, &addr));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_addr_parse("192.0.2.1:1", NULL));
	OK(rwg_addr_parse("[2001:db8::1]:51820", &addr));
	CHECK(addr.family == RWG_FAMILY_IPV6 && addr.port == 51820 && addr.ip[0] == 0x20);

	/* A core, and bad calls on it. */
	rwg_core core = {42};
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_new(NULL, &core));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_new(private_key, NULL));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_new(zero, &core));
	CHECK(core.id == 42);
	OK(rwg_core_new(private_key, &core));
	uint8_t peer[32];
	OK(rwg_generate_private_key(other));
	OK(rwg_public_key(other, peer));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_add_peer(core, NULL));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_add_peer(core, public_key));
	EXPECT(RWG_ERROR_UNKNOWN_PEER, rwg_core_remove_peer(core, peer));
	EXPECT(RWG_ERROR_UNKNOWN_PEER, rwg_core_set_endpoint(core, peer, &addr));
	EXPECT(RWG_ERROR_UNKNOWN_PEER, rwg_core_add_allowed_ip(core, peer, "10.0.0.0/8"));
	EXPECT(RWG_ERROR_UNKNOWN_PEER, rwg_core_set_preshared_key(core, peer, zero));
	EXPECT(RWG_ERROR_UNKNOWN_PEER, rwg_core_set_persistent_keepalive(core, 1, peer, 25));
	OK(rwg_core_add_peer(core, peer));
	OK(rwg_core_add_peer(core, peer)); /* again: changes nothing */
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_set_preshared_key(core, peer, NULL));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_set_endpoint(core, peer, NULL));
	rwg_addr bad_family = addr;
	bad_family.family = 5;
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_set_endpoint(core, peer, &bad_family));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_add_allowed_ip(core, peer, NULL));
	static const char *bad_prefixes[] = {"10.0.0.0/33", "fd00::/129", "", "10.0.0.0/", "x", "1.2.3.4/-1"};
	for (size_t i = 0; i < sizeof bad_prefixes / sizeof bad_prefixes[0]; i++)
		EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_add_allowed_ip(core, peer, bad_prefixes[i]));
	rwg_peer_stats ps;
	OK(rwg_core_peer_stats(core, peer, &ps));
	CHECK(ps.allowed_ips == 0 && ps.endpoint.family == 0);
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_peer_stats(core, peer, NULL));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_peer_stats(core, NULL, &ps));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_set_mtu(core, 100));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_set_mtu(core, 70000));
	OK(rwg_core_add_allowed_ip(core, peer, "10.0.0.2/32"));

	/* The data path: pointers, lengths, overlap. A refused call leaves `result` alone. */
	static uint8_t packet[70000], out[70100];
	rwg_result result, untouched;
	memset(&untouched, 0xab, sizeof untouched);
	memset(packet, 0, 28);
	packet[0] = 0x45;
	packet[3] = 28;
	packet[12] = 10, packet[15] = 1;
	packet[16] = 10, packet[19] = 2;
	result = untouched;
	EXPECT(RWG_ERROR_BUFFER_TOO_SMALL,
	       rwg_core_encapsulate(core, 1, packet, 28, out, 28 + RWG_MAX_OVERHEAD - 1, &result));
	CHECK(memcmp(&result, &untouched, sizeof result) == 0);
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_encapsulate(core, 1, NULL, 28, out, 100, &result));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_encapsulate(core, 1, packet, 28, NULL, 100, &result));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_encapsulate(core, 1, packet, 28, out, 100, NULL));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT,
	       rwg_core_encapsulate(core, 1, packet, sizeof packet, out, sizeof out, &result));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT,
	       rwg_core_encapsulate(core, 1, out + 10, 28, out, 100, &result));
	CHECK(memcmp(&result, &untouched, sizeof result) == 0);
	/* An empty packet is the network's kind of bad: a verdict, not an error. */
	OK(rwg_core_encapsulate(core, 1, NULL, 0, out, RWG_MAX_OVERHEAD, &result));
	CHECK(result.kind == RWG_OUTCOME_DROPPED);
	CHECK(result.drop_reason == RWG_DROP_REASON_INVALID_INNER_PACKET);
	/* No endpoint yet for 10.0.0.2. */
	OK(rwg_core_encapsulate(core, 1, packet, 28, out, 28 + RWG_MAX_OVERHEAD, &result));
	CHECK(result.kind == RWG_OUTCOME_DROPPED && result.drop_reason == RWG_DROP_REASON_NO_ENDPOINT);

	rwg_addr source;
	OK(rwg_addr_parse("192.0.2.9:4000", &source));
	uint8_t garbage[64];
	memset(garbage, 7, sizeof garbage);
	result = untouched;
	EXPECT(RWG_ERROR_NULL_POINTER,
	       rwg_core_decapsulate(core, 1, NULL, garbage, sizeof garbage, out, 100, &result));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT,
	       rwg_core_decapsulate(core, 1, &bad_family, garbage, sizeof garbage, out, 100, &result));
	EXPECT(RWG_ERROR_BUFFER_TOO_SMALL,
	       rwg_core_decapsulate(core, 1, &source, garbage, sizeof garbage, out, 63, &result));
	EXPECT(RWG_ERROR_NULL_POINTER,
	       rwg_core_decapsulate(core, 1, &source, NULL, 64, out, 100, &result));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT,
	       rwg_core_decapsulate(core, 1, &source, out, 64, out + 32, 100, &result));
	CHECK(memcmp(&result, &untouched, sizeof result) == 0);
	OK(rwg_core_decapsulate(core, 1, &source, garbage, sizeof garbage, out, 64, &result));
	CHECK(result.kind == RWG_OUTCOME_DROPPED && result.drop_reason == RWG_DROP_REASON_MALFORMED);
	uint64_t n = 0;
	OK(rwg_core_dropped(core, RWG_DROP_REASON_MALFORMED, &n));
	CHECK(n == 1);
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_dropped(core, RWG_DROP_REASON_NONE, &n));
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_core_dropped(core, RWG_DROP_REASON_OTHER, &n));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_dropped(core, RWG_DROP_REASON_MALFORMED, NULL));
	rwg_counters counters;
	OK(rwg_core_counters(core, &counters));
	CHECK(counters.dropped == 3 && counters.peers == 1);
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_counters(core, NULL));

	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_poll_transmit(core, out, sizeof out, NULL));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_poll_transmit(core, NULL, 100, &result));
	OK(rwg_core_poll_transmit(core, NULL, 0, &result));
	CHECK(result.kind == RWG_OUTCOME_NONE);
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_next_deadline(core, NULL));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_core_poll_event(core, NULL));

	/* Use after free: the handle table refuses it; ids are never reused. */
	OK(rwg_core_free(core));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_free(core));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_add_peer(core, peer));
	EXPECT(RWG_ERROR_INVALID_HANDLE,
	       rwg_core_encapsulate(core, 1, packet, 28, out, 28 + RWG_MAX_OVERHEAD, &result));
	EXPECT(RWG_ERROR_INVALID_HANDLE,
	       rwg_core_decapsulate(core, 1, &source, garbage, sizeof garbage, out, 64, &result));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_poll_transmit(core, out, 100, &result));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_tick(core, 1));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_counters(core, &counters));
	rwg_core never = {0};
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_tick(never, 1));
	rwg_core fresh;
	OK(rwg_core_new(private_key, &fresh));
	CHECK(fresh.id != core.id);
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_tick(core, 1));
	/* A core's id is not a tunnel. */
	rwg_tunnel not_a_tunnel = {fresh.id};
	size_t needed = 0;
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_get(not_a_tunnel, NULL, 0, &needed));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_set(not_a_tunnel, "listen_port=1"));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_bump_sockets(not_a_tunnel));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_status(not_a_tunnel));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_stop(not_a_tunnel));
	int fd4, fd6;
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_socket_fds(not_a_tunnel, &fd4, &fd6));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_tunnel_socket_fds(not_a_tunnel, NULL, &fd6));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_tunnel_get(not_a_tunnel, NULL, 0, NULL));
	EXPECT(RWG_ERROR_NULL_POINTER, rwg_tunnel_set(not_a_tunnel, NULL));
	OK(rwg_core_tick(fresh, 1));
	OK(rwg_core_free(fresh));
	free_while_in_use(private_key);

	/* Tunnel starts that fail: the descriptor is the library's, closed on failure. */
	rwg_tunnel t = {77};
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_tunnel_start("", -1, &t));
	int closed = dev_null();
	close(closed);
	EXPECT(RWG_ERROR_INVALID_ARGUMENT, rwg_tunnel_start("", closed, &t));
	CHECK(t.id == 77);
	start_fails(RWG_ERROR_NULL_POINTER, 0, NULL);
	start_fails(RWG_ERROR_NULL_POINTER, 1, NULL);
	{
		int fd = dev_null();
		EXPECT(RWG_ERROR_NULL_POINTER, rwg_tunnel_start("", fd, NULL));
		CHECK(!is_open(fd));
	}
	char config[1024];
	snprintf(config, sizeof config, "private_key=%s\nbogus_key=1\n", private_hex);
	start_fails(RWG_ERROR_INVALID_CONFIG, 0, config);
	start_fails(RWG_ERROR_INVALID_CONFIG, 0, "private_key=zz\n");
	start_fails(RWG_ERROR_INVALID_CONFIG, 0, "listen_port=99999\n");
	start_fails(RWG_ERROR_INVALID_CONFIG, 0, "no equals sign\n");
	start_fails(RWG_ERROR_INVALID_CONFIG, 0, "get=1\n");
	start_fails(RWG_ERROR_INVALID_CONFIG, 0, "\xff\xfe=1\n");
	start_fails(RWG_ERROR_INVALID_CONFIG, 1, "");
	start_fails(RWG_ERROR_INVALID_CONFIG, 1, "[Interface]\nPrivateKey = short\n");
	start_fails(RWG_ERROR_INVALID_CONFIG, 1, "[Peer]\nPublicKey = x\n");
	/* A key alone on a line: the error must not quote it. */
	snprintf(config, sizeof config, "[Interface]\nPrivateKey = %s\n%s\n", private_b64, private_b64);
	start_fails(RWG_ERROR_INVALID_CONFIG, 1, config);
	/* Valid configurations on a descriptor that is not a TUN device. */
	snprintf(config, sizeof config, "private_key=%s\nlisten_port=0\n", private_hex);
	start_fails(RWG_ERROR_NOT_TUN, 0, config);
	snprintf(config, sizeof config, "[Interface]\nPrivateKey = %s\nAddress = 10.0.0.1/24\n",
	         private_b64);
	start_fails(RWG_ERROR_NOT_TUN, 1, config);

	/* What was logged: the configuration errors, and no key. */
	pthread_mutex_lock(&log_lock);
	CHECK(strstr(logged, "line 3") != NULL);
	CHECK(strstr(logged, "errno=-22") != NULL);
	CHECK(strstr(logged, "not a TUN") != NULL);
	char fragment[17];
	for (size_t i = 0; i + 16 <= 44; i += 4) {
		memcpy(fragment, private_b64 + i, 16);
		fragment[16] = 0;
		CHECK(strstr(logged, fragment) == NULL);
	}
	for (size_t i = 0; i + 16 <= 64; i += 8) {
		memcpy(fragment, private_hex + i, 16);
		fragment[16] = 0;
		CHECK(strstr(logged, fragment) == NULL);
	}
	int lines = log_lines;
	if (getenv("RWG_TEST_VERBOSE")) fputs(logged, stderr);
	pthread_mutex_unlock(&log_lock);

	/* Logging off: nothing more arrives. */
	OK(rwg_set_logger(NULL, NULL, RWG_LOG_LEVEL_TRACE));
	start_fails(RWG_ERROR_INVALID_CONFIG, 0, "bogus=1\n");
	CHECK(log_lines == lines);

	memset(private_key, 0, sizeof private_key);
	printf("bad_calls: ok (%d log lines, none with a key)\n", lines);
	return 0;
}
