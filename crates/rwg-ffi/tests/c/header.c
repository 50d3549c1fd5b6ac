/* The header on its own, compiled as C99 and as C++ (the test harness builds this file both
 * ways with -Wall -Wextra -Werror -pedantic): every type is usable and every function has a
 * prototype. Linked and run, it also checks that the library it is linked with is the ABI
 * the header describes. */
#include "rwg.h"

#include <stdio.h>
#include <string.h>

int main(void) {
	rwg_core core = {0};
	rwg_tunnel tunnel = {0};
	rwg_addr addr;
	rwg_result result;
	rwg_event event;
	rwg_peer_stats peer;
	rwg_counters counters;
	rwg_log_fn log = NULL;
	rwg_error e = RWG_ERROR_OK;
	rwg_outcome kind = RWG_OUTCOME_NONE;
	rwg_drop_reason reason = RWG_DROP_REASON_NONE;
	rwg_event_kind event_kind = RWG_EVENT_KIND_NONE;
	rwg_log_level level = RWG_LOG_LEVEL_OFF;
	memset(&addr, 0, sizeof addr);
	memset(&result, 0, sizeof result);
	memset(&event, 0, sizeof event);
	memset(&peer, 0, sizeof peer);
	memset(&counters, 0, sizeof counters);
	(void)log;
	(void)kind;
	(void)reason;
	(void)event_kind;
	(void)level;
	if (rwg_abi_version() != RWG_ABI_VERSION) {
		fprintf(stderr, "library ABI %u, header ABI %u\n", rwg_abi_version(), RWG_ABI_VERSION);
		return 1;
	}
	e = rwg_core_tick(core, 0);
	if (e != RWG_ERROR_INVALID_HANDLE) return 1;
	e = rwg_tunnel_status(tunnel);
	if (e != RWG_ERROR_INVALID_HANDLE) return 1;
	printf("header: rwg %s, ABI %u, %s\n", rwg_version(), rwg_abi_version(), rwg_strerror(e));
	return 0;
}
