/*
 * A tunnel-level instance on a TUN descriptor, as a mobile app runs one: a privileged part
 * (here: this program before it drops to an unprivileged user; on Android: the system) hands
 * over an open TUN descriptor, and everything after runs without privileges. Run by
 * tests/c_programs.rs inside network namespace A, against wireguard-go in namespace B:
 *
 *   netns A                                          netns B
 *   this program (uid 65534 after setup)             wireguard-go
 *   TUN <tun> 10.9.0.1/24  --UDP 192.168.77.1 <-veth-> 192.168.77.2:51820--  wg 10.9.0.2/24
 *
 * Usage: tunnel_netns TUN PEER_PUBLIC_KEY PEER_INNER_IP NEW_PORT UID < wg-quick-config
 *
 * Steps: start from the wg-quick text, ping through the tunnel (ICMP echo, payload checked),
 * read the state with get, reconfigure live (new listen port, keepalive, one more allowed IP)
 * and read it back, refuse a malformed set without change, bump the sockets and ping again,
 * stop (the TUN descriptor is closed and the port free once stop returns), and check that no
 * log line holds the private key.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"

static char logged[1 << 20];
static size_t logged_len;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* Called from the library's threads: print and keep every line. */
static void on_log(void *context, int32_t level, const char *message) {
	(void)context;
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "rwg[%d]: %s\n", level, message);
	size_t n = strlen(message);
	if (logged_len + n + 1 < sizeof logged) {
		memcpy(logged + logged_len, message, n);
		logged[logged_len + n] = '\n';
		logged_len += n + 1;
		logged[logged_len] = 0;
	}
	pthread_mutex_unlock(&log_lock);
}

static int open_tun(const char *name) {
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	CHECK(strlen(name) < IFNAMSIZ);
	strcpy(ifr.ifr_name, name);
	CHECK(ioctl(fd, TUNSETIFF, &ifr) == 0);
	return fd;
}

static void drop_privileges(uid_t uid) {
	CHECK(setgroups(0, NULL) == 0);
	CHECK(setgid(uid) == 0);
	CHECK(setuid(uid) == 0);
	CHECK(getuid() == uid && geteuid() == uid);
	/* Proof: no more TUN devices for us. */
	CHECK(open("/dev/net/tun", O_RDWR) < 0);
}

/* One ICMP echo through the tunnel with an unprivileged ICMP socket; 1 if the reply came
 * back within a second with the same payload. */
static int ping_once(const char *ip, uint16_t seq) {
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP);
	CHECK(s >= 0);
	struct sockaddr_in to;
	memset(&to, 0, sizeof to);
	to.sin_family = AF_INET;
	CHECK(inet_pton(AF_INET, ip, &to.sin_addr) == 1);
	uint8_t request[8 + 56], reply[1500];
	memset(request, 0, 8);
	request[0] = ICMP_ECHO;
	request[6] = (uint8_t)(seq >> 8);
	request[7] = (uint8_t)seq;
	for (int i = 0; i < 56; i++) request[8 + i] = (uint8_t)(seq * 7 + i);
	CHECK(sendto(s, request, sizeof request, 0, (struct sockaddr *)&to, sizeof to) ==
	      (ssize_t)sizeof request);
	int ok = 0;
	struct pollfd p = {.fd = s, .events = POLLIN};
	while (!ok && poll(&p, 1, 1000) == 1) {
		ssize_t n = recv(s, reply, sizeof reply, 0);
		if (n == (ssize_t)sizeof request && reply[0] == ICMP_ECHOREPLY && reply[6] == request[6] &&
		    reply[7] == request[7])
			ok = memcmp(reply + 8, request + 8, 56) == 0;
	}
	close(s);
	return ok;
}

/* Pings until one reply (at most 10 tries: the first waits for the handshake), then `more`
 * that must all be answered. */
static void ping(const char *ip, int more) {
	static uint16_t seq = 1;
	int tries = 0;
	while (!ping_once(ip, seq++)) CHECK(++tries < 10);
	for (int i = 0; i < more; i++) CHECK(ping_once(ip, seq++));
}

/* The `get` text, in a buffer sized by asking first. */
static char *get(rwg_tunnel t) {
	size_t needed = 0;
	EXPECT(RWG_ERROR_BUFFER_TOO_SMALL, rwg_tunnel_get(t, NULL, 0, &needed));
	CHECK(needed > 1);
	char *text = malloc(needed + 64);
	CHECK(text != NULL);
	size_t again = 0;
	OK(rwg_tunnel_get(t, text, needed + 64, &again));
	CHECK(strlen(text) + 1 == again);
	return text;
}

static const char *value(const char *text, const char *key_eq) {
	const char *line = strstr(text, key_eq);
	return line ? line + strlen(key_eq) : NULL;
}

static uint16_t bound_port(int fd) {
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	CHECK(getsockname(fd, (struct sockaddr *)&ss, &len) == 0);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int main(int argc, char **argv) {
	CHECK(argc == 6);
	const char *tun_name = argv[1], *peer_b64 = argv[2], *peer_ip = argv[3];
	int new_port = atoi(argv[4]);
	uid_t uid = (uid_t)atoi(argv[5]);

	static char config[8192];
	size_t config_len = fread(config, 1, sizeof config - 1, stdin);
	CHECK(config_len > 0 && config_len < sizeof config - 1);
	config[config_len] = 0;
	/* The private key, to look for in the logs later. */
	const char *pk_line = strstr(config, "PrivateKey = ");
	CHECK(pk_line != NULL);
	char private_b64[45];
	memcpy(private_b64, pk_line + 13, 44);
	private_b64[44] = 0;
	uint8_t private_key[32], peer_key[32];
	char private_hex[65], peer_hex[65];
	OK(rwg_key_from_base64(private_b64, private_key));
	OK(rwg_key_from_base64(peer_b64, peer_key));
	for (int i = 0; i < 32; i++) {
		sprintf(private_hex + 2 * i, "%02x", private_key[i]);
		sprintf(peer_hex + 2 * i, "%02x", peer_key[i]);
	}

	int tun = open_tun(tun_name);
	drop_privileges(uid);
	OK(rwg_set_logger(on_log, NULL, RWG_LOG_LEVEL_DEBUG));

	rwg_tunnel t;
	OK(rwg_tunnel_start_wg_quick(config, tun, &t));
	memset(config, 0, sizeof config);
	OK(rwg_tunnel_status(t));

	ping(peer_ip, 3);
	char *state = get(t);
	CHECK(value(state, "private_key=") && strncmp(value(state, "private_key="), private_hex, 64) == 0);
	CHECK(value(state, "public_key=") && strncmp(value(state, "public_key="), peer_hex, 64) == 0);
	const char *port = value(state, "listen_port=");
	CHECK(port != NULL);
	int first_port = atoi(port);
	CHECK(first_port > 0 && first_port != new_port);
	CHECK(value(state, "last_handshake_time_sec=") && atol(value(state, "last_handshake_time_sec=")) > 0);
	CHECK(value(state, "rx_bytes=") && atol(value(state, "rx_bytes=")) > 0);
	CHECK(value(state, "allowed_ip=10.9.0.0/24\n") != NULL);
	free(state);

	/* Live reconfiguration: a new port (wireguard-go learns it from our next packet), a
	 * keepalive, one more allowed IP; the session stays. */
	char set[512];
	snprintf(set, sizeof set,
	         "listen_port=%d\npublic_key=%s\npersistent_keepalive_interval=7\nallowed_ip=10.9.1.0/24\n",
	         new_port, peer_hex);
	OK(rwg_tunnel_set(t, set));
	ping(peer_ip, 2);
	state = get(t);
	CHECK(atoi(value(state, "listen_port=")) == new_port);
	CHECK(value(state, "persistent_keepalive_interval=7\n") != NULL);
	CHECK(value(state, "allowed_ip=10.9.0.0/24\n") != NULL);
	CHECK(value(state, "allowed_ip=10.9.1.0/24\n") != NULL);

	/* A malformed set changes nothing, not even its valid first line. */
	EXPECT(RWG_ERROR_INVALID_CONFIG, rwg_tunnel_set(t, "listen_port=1\nbogus_key=1\n"));
	char *unchanged = get(t);
	CHECK(atoi(value(unchanged, "listen_port=")) == new_port);
	free(unchanged);
	free(state);

	int fd4 = -1, fd6 = -1;
	OK(rwg_tunnel_socket_fds(t, &fd4, &fd6));
	CHECK(fd4 >= 0);
	CHECK(bound_port(fd4) == new_port);

	/* After a network change: new sockets on the same port, a handshake, traffic. */
	OK(rwg_tunnel_bump_sockets(t));
	OK(rwg_tunnel_socket_fds(t, &fd4, &fd6));
	CHECK(bound_port(fd4) == new_port);
	ping(peer_ip, 2);
	OK(rwg_tunnel_status(t));

	/* Stop: once it returns, the TUN descriptor is closed and the port is free. */
	OK(rwg_tunnel_stop(t));
	CHECK(fcntl(tun, F_GETFD) < 0 && errno == EBADF);
	int probe = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in any;
	memset(&any, 0, sizeof any);
	any.sin_family = AF_INET;
	any.sin_port = htons((uint16_t)new_port);
	CHECK(bind(probe, (struct sockaddr *)&any, sizeof any) == 0);
	close(probe);
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_stop(t));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_tunnel_status(t));

	/* The logs: the tunnel's lines are there, the key is not. */
	OK(rwg_set_logger(NULL, NULL, 0));
	CHECK(strstr(logged, "tunnel started") != NULL);
	CHECK(strstr(logged, "UDP sockets rebound") != NULL);
	CHECK(strstr(logged, "Address, DNS") != NULL);
	CHECK(strstr(logged, private_b64) == NULL);
	CHECK(strstr(logged, private_hex) == NULL);
	char fragment[17];
	for (int i = 0; i + 16 <= 64; i += 8) {
		memcpy(fragment, private_hex + i, 16);
		fragment[16] = 0;
		CHECK(strstr(logged, fragment) == NULL);
	}
	printf("tunnel_netns: ok (ports %d then %d)\n", first_port, new_port);
	return 0;
}
