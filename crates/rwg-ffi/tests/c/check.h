/* Assertions for the C tests of rwg-ffi: a failed check prints where and exits with 1. */
#ifndef RWG_TEST_CHECK_H
#define RWG_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "rwg.h"

#define CHECK(cond)                                                                        \
	do {                                                                                   \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
			exit(1);                                                                       \
		}                                                                                  \
	} while (0)

/* A call that must return the given rwg_error. */
#define EXPECT(want, call)                                                                 \
	do {                                                                                   \
		int got_ = (int)(call);                                                            \
		if (got_ != (int)(want)) {                                                         \
			fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s)\n", __FILE__,     \
			        __LINE__, #call, got_, rwg_strerror(got_), (int)(want),                \
			        rwg_strerror((int)(want)));                                            \
			exit(1);                                                                       \
		}                                                                                  \
	} while (0)

#define OK(call) EXPECT(RWG_ERROR_OK, call)

#endif
