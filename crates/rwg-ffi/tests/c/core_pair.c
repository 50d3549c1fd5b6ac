/*
 * Two WireGuard peers through the core level in one process. This program is their network
 * (it carries every datagram by hand) and their clock (virtual nanoseconds):
 *
 *     A  192.0.2.1:51820, inner 10.0.0.1  <== datagrams ==>  B  192.0.2.2:51821, inner 10.0.0.2
 *        knows B's endpoint                                     learns A's from the handshake
 *
 * Checks: the handshake A's first packet starts; packets of many sizes both ways, every byte
 * compared; rekeys as the clock runs through ten minutes of traffic; a new session after a
 * silence longer than the keys live; the counters against what this program carried; and
 * the handles refused once freed.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define BUF 2048
#define MAX_EXPECTED 64
#define SECOND 1000000000ull

typedef struct node {
	const char *name;
	rwg_core core;
	uint8_t public_key[32];
	rwg_addr addr;
	uint8_t inner[4];
	struct node *peer;
	/* Packets sent to this node and not yet delivered, oldest first. */
	uint8_t expected[MAX_EXPECTED][BUF];
	size_t expected_len[MAX_EXPECTED];
	size_t expected_head, expected_count;
	uint64_t bytes_sent;     /* datagrams this node emitted */
	uint64_t bytes_accepted; /* datagrams fed to this node that were not dropped */
	uint64_t delivered;      /* packets delivered, every byte checked */
	uint64_t handshake_events;
} node;

static uint64_t now_ns = 5 * SECOND;
static uint32_t seed = 12345;

static uint8_t next_byte(void) {
	seed = seed * 1103515245u + 12345u;
	return (uint8_t)(seed >> 16);
}

static int same_addr(const rwg_addr *a, const rwg_addr *b) {
	return a->family == b->family && a->port == b->port && memcmp(a->ip, b->ip, 16) == 0;
}

static int contains(const uint8_t *hay, size_t hay_len, const uint8_t *needle, size_t len) {
	for (size_t i = 0; i + len <= hay_len; i++)
		if (memcmp(hay + i, needle, len) == 0) return 1;
	return 0;
}

/* An IPv4/UDP packet from one node's inner address to the other's, random payload. */
static size_t make_packet(uint8_t *p, const node *from, const node *to, size_t payload) {
	size_t len = 28 + payload;
	memset(p, 0, 28);
	p[0] = 0x45;
	p[2] = (uint8_t)(len >> 8);
	p[3] = (uint8_t)len;
	p[8] = 64;
	p[9] = 17;
	memcpy(p + 12, from->inner, 4);
	memcpy(p + 16, to->inner, 4);
	for (size_t i = 0; i < payload; i++) p[28 + i] = next_byte();
	return len;
}

static void drain_events(node *n) {
	for (;;) {
		rwg_event e;
		OK(rwg_core_poll_event(n->core, &e));
		if (e.kind == RWG_EVENT_KIND_NONE) return;
		CHECK(memcmp(e.peer, n->peer->public_key, 32) == 0);
		if (e.kind == RWG_EVENT_KIND_HANDSHAKE_COMPLETED) n->handshake_events++;
	}
}

/* Hands a datagram from `from` to `to` and checks what came out. */
static void deliver(node *to, node *from, const uint8_t *datagram, size_t len) {
	uint8_t out[BUF];
	rwg_result r;
	OK(rwg_core_decapsulate(to->core, now_ns, &from->addr, datagram, len, out, len, &r));
	if (r.kind == RWG_OUTCOME_DROPPED) {
		fprintf(stderr, "%s dropped a datagram of %zu bytes: %s\n", to->name, len,
		        rwg_drop_reason_str(r.drop_reason));
		exit(1);
	}
	to->bytes_accepted += len;
	if (r.kind != RWG_OUTCOME_PACKET) {
		CHECK(r.kind == RWG_OUTCOME_KEEPALIVE || r.kind == RWG_OUTCOME_HANDSHAKE);
		return;
	}
	CHECK(to->expected_count > 0);
	size_t head = to->expected_head;
	CHECK(r.len == to->expected_len[head]);
	CHECK(memcmp(out, to->expected[head], r.len) == 0);
	CHECK(memcmp(r.peer, from->public_key, 32) == 0);
	to->expected_head = (head + 1) % MAX_EXPECTED;
	to->expected_count--;
	to->delivered++;
}

/* Carries everything both want to send until both are quiet. */
static void shuttle(node *a) {
	for (int round = 0; round < 100; round++) {
		int moved = 0;
		node *from = a;
		for (int direction = 0; direction < 2; direction++, from = from->peer) {
			for (;;) {
				uint8_t buf[BUF];
				rwg_result t;
				OK(rwg_core_poll_transmit(from->core, buf, sizeof buf, &t));
				if (t.kind == RWG_OUTCOME_NONE) break;
				CHECK(t.kind == RWG_OUTCOME_TRANSMIT);
				CHECK(same_addr(&t.addr, &from->peer->addr));
				CHECK(t.len > 0 && t.len <= sizeof buf);
				from->bytes_sent += t.len;
				moved = 1;
				deliver(from->peer, from, buf, t.len);
			}
			drain_events(from);
		}
		if (!moved) return;
	}
	CHECK(!"the two never went quiet");
}

/* Sends one packet of `payload` bytes from `from` to its peer; returns the result kind. */
static rwg_outcome send_packet(node *from, size_t payload) {
	node *to = from->peer;
	uint8_t packet[BUF], out[BUF + RWG_MAX_OVERHEAD];
	rwg_result r;
	size_t len = make_packet(packet, from, to, payload);
	CHECK(to->expected_count < MAX_EXPECTED);
	size_t slot = (to->expected_head + to->expected_count) % MAX_EXPECTED;
	memcpy(to->expected[slot], packet, len);
	to->expected_len[slot] = len;
	to->expected_count++;
	/* Exactly the documented minimum output size. */
	OK(rwg_core_encapsulate(from->core, now_ns, packet, len, out, len + RWG_MAX_OVERHEAD, &r));
	if (r.kind == RWG_OUTCOME_TRANSMIT) {
		CHECK(same_addr(&r.addr, &to->addr));
		CHECK(r.len >= len + 32 && r.len <= len + RWG_MAX_OVERHEAD);
		/* Encrypted: no 16 bytes of the payload appear in the datagram. */
		if (payload >= 16) CHECK(!contains(out, r.len, packet + 28, 16));
		from->bytes_sent += r.len;
		deliver(to, from, out, r.len);
	} else {
		CHECK(r.kind == RWG_OUTCOME_STAGED);
	}
	shuttle(from);
	return r.kind;
}

/* Runs both clocks up to `until`, ticking each core at its deadlines. */
static void run_until(node *a, uint64_t until) {
	for (int i = 0; i < 100000; i++) {
		uint64_t da, db;
		OK(rwg_core_next_deadline(a->core, &da));
		OK(rwg_core_next_deadline(a->peer->core, &db));
		uint64_t d = da < db ? da : db;
		if (d == RWG_NO_DEADLINE || d > until) {
			now_ns = until;
			return;
		}
		if (d > now_ns) now_ns = d;
		OK(rwg_core_tick(a->core, now_ns));
		OK(rwg_core_tick(a->peer->core, now_ns));
		shuttle(a);
	}
	CHECK(!"the timers never settled");
}

static uint64_t handshakes(const node *n) {
	rwg_counters s;
	OK(rwg_core_counters(n->core, &s));
	return s.handshakes_completed;
}

static void check_counters(const node *n, uint64_t unix_start) {
	rwg_peer_stats p;
	rwg_counters s;
	OK(rwg_core_peer_stats(n->core, n->peer->public_key, &p));
	OK(rwg_core_counters(n->core, &s));
	if (p.tx_bytes != n->bytes_sent || p.rx_bytes != n->bytes_accepted) {
		fprintf(stderr, "%s: tx %llu (carried %llu), rx %llu (accepted %llu)\n", n->name,
		        (unsigned long long)p.tx_bytes, (unsigned long long)n->bytes_sent,
		        (unsigned long long)p.rx_bytes, (unsigned long long)n->bytes_accepted);
		exit(1);
	}
	CHECK(s.peers == 1);
	CHECK(s.dropped == 0);
	CHECK(s.handshakes_given_up == 0);
	CHECK(s.handshake_messages_received > 0);
	CHECK(n->handshake_events == s.handshakes_completed);
	CHECK(p.allowed_ips == 1);
	CHECK(same_addr(&p.endpoint, &n->peer->addr));
	/* The last handshake happened on the virtual clock, after the start. */
	CHECK(p.last_handshake_unix_ns > unix_start);
	CHECK(p.last_handshake_unix_ns <= unix_start + now_ns);
	CHECK(n->expected_count == 0);
}

static void setup(node *n, const char *name, const char *addr, uint8_t last, node *peer) {
	uint8_t private_key[32];
	char b64[RWG_KEY_BASE64_SIZE];
	uint8_t back[32];
	n->name = name;
	n->peer = peer;
	OK(rwg_generate_private_key(private_key));
	OK(rwg_public_key(private_key, n->public_key));
	OK(rwg_key_to_base64(n->public_key, b64, sizeof b64));
	CHECK(strlen(b64) == 44);
	OK(rwg_key_from_base64(b64, back));
	CHECK(memcmp(back, n->public_key, 32) == 0);
	OK(rwg_core_new(private_key, &n->core));
	memset(private_key, 0, sizeof private_key);
	CHECK(n->core.id != 0);
	OK(rwg_addr_parse(addr, &n->addr));
	n->inner[0] = 10;
	n->inner[3] = last;
}

int main(void) {
	static node a, b;
	CHECK(rwg_abi_version() == RWG_ABI_VERSION);
	CHECK(strlen(rwg_version()) > 0);

	setup(&a, "A", "192.0.2.1:51820", 1, &b);
	setup(&b, "B", "192.0.2.2:51821", 2, &a);
	uint64_t unix_start = (uint64_t)time(NULL) * SECOND;
	OK(rwg_core_set_wall_clock(a.core, now_ns, unix_start + now_ns));
	OK(rwg_core_set_wall_clock(b.core, now_ns, unix_start + now_ns));
	OK(rwg_core_add_peer(a.core, b.public_key));
	OK(rwg_core_set_endpoint(a.core, b.public_key, &b.addr));
	OK(rwg_core_add_allowed_ip(a.core, b.public_key, "10.0.0.2/32"));
	OK(rwg_core_add_peer(b.core, a.public_key));
	OK(rwg_core_add_allowed_ip(b.core, a.public_key, "10.0.0.1"));

	/* No session yet: the first packet waits for the handshake it starts. */
	CHECK(send_packet(&a, 100) == RWG_OUTCOME_STAGED);
	CHECK(b.delivered == 1);
	CHECK(handshakes(&a) == 1 && handshakes(&b) == 1);

	/* Data both ways, sizes around the padding boundaries and up to the MTU. */
	static const size_t sizes[] = {0, 1, 2, 15, 16, 17, 31, 100, 500, 1000, 1371, 1372, 1392};
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		CHECK(send_packet(&a, sizes[i]) == RWG_OUTCOME_TRANSMIT);
		CHECK(send_packet(&b, sizes[i]) == RWG_OUTCOME_TRANSMIT);
	}

	/* Past REKEY_AFTER_TIME (120 s) the initiator's next packet still goes out under the old
	 * session and starts a new handshake, which completes at once here. */
	uint64_t before = handshakes(&a);
	run_until(&a, now_ns + 121 * SECOND);
	CHECK(send_packet(&a, 64) == RWG_OUTCOME_TRANSMIT);
	CHECK(handshakes(&a) == before + 1);
	CHECK(send_packet(&b, 64) == RWG_OUTCOME_TRANSMIT);

	/* Ten minutes of traffic every 10 s: a rekey about every two minutes. */
	before = handshakes(&a);
	for (int i = 0; i < 60; i++) {
		CHECK(send_packet(&a, (size_t)(i * 23 % 1300)) == RWG_OUTCOME_TRANSMIT);
		CHECK(send_packet(&b, (size_t)(i * 37 % 1300)) == RWG_OUTCOME_TRANSMIT);
		run_until(&a, now_ns + 10 * SECOND);
	}
	CHECK(handshakes(&a) >= before + 4);
	CHECK(handshakes(&b) == handshakes(&a));

	/* Silence beyond REJECT_AFTER_TIME (180 s): the keys are dead, the next packet waits for
	 * a new handshake, then gets through. */
	run_until(&a, now_ns + 200 * SECOND);
	before = handshakes(&a);
	CHECK(send_packet(&a, 300) == RWG_OUTCOME_STAGED);
	CHECK(handshakes(&a) == before + 1);
	CHECK(send_packet(&b, 300) == RWG_OUTCOME_TRANSMIT);

	check_counters(&a, unix_start);
	check_counters(&b, unix_start);

	printf("core_pair: %llu + %llu packets checked, %llu handshakes, %llu/%llu bytes\n",
	       (unsigned long long)a.delivered, (unsigned long long)b.delivered,
	       (unsigned long long)handshakes(&a), (unsigned long long)a.bytes_sent,
	       (unsigned long long)b.bytes_sent);

	OK(rwg_core_free(a.core));
	OK(rwg_core_free(b.core));
	uint64_t deadline;
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_next_deadline(a.core, &deadline));
	EXPECT(RWG_ERROR_INVALID_HANDLE, rwg_core_free(b.core));
	return 0;
}
