/* iplimit: sessions open per client IP address, across all workers, for
 * [proxy] max_connections_per_ip. An IPv4 client counts per address (/32),
 * an IPv6 client per network of [proxy] ip_prefix_v6 bits (one host
 * usually has a whole /64). Touched once when a session starts and once
 * when it ends, under one lock. */
#ifndef IMAPFRONT_IPLIMIT_H
#define IMAPFRONT_IPLIMIT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* Sets how many leading bits of an IPv6 address make the key (32..128,
 * clamped; 64 until called). Call it before the first acquire: an address
 * must be keyed the same way at acquire and at release. */
void imf_iplimit_set_prefix_v6(unsigned bits);
/* The prefix in use. */
unsigned imf_iplimit_prefix_v6(void);

/* Counts one more session from addr's IP unless that makes more than max
 * (0 = no limit: always counts). Returns false when refused. */
bool imf_iplimit_acquire(const struct sockaddr *addr, uint32_t max);

/* Undoes one successful acquire for addr's IP. */
void imf_iplimit_release(const struct sockaddr *addr);

/* Sessions counted for addr's IP now (tests). */
uint32_t imf_iplimit_count(const struct sockaddr *addr);

#endif
