/* fcgi_record.h - FastCGI response records (FastCGI 1.0 spec, section 3):
 * STDOUT records carrying the CGI response, the empty STDOUT record that ends
 * the stream, and END_REQUEST. Pure encoding into buffers; no I/O.
 */
#ifndef PW_FCGI_RECORD_H
#define PW_FCGI_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define FCGI_REC_HEADER   8
#define FCGI_REC_MAX_BODY 65535

/* Append data as STDOUT records (as many as needed; no padding) to out. */
void fcgi_rec_stdout(buf *out, uint16_t reqid, const void *data, size_t len);

/* Append the end of a response: an empty STDOUT record and END_REQUEST with
 * appStatus 0 and protocolStatus REQUEST_COMPLETE. */
void fcgi_rec_end(buf *out, uint16_t reqid);

/* A whole response: head (CGI headers ending in an empty line) and body as
 * STDOUT records, then the end records, in one shared buffer. */
rbuf *fcgi_rec_response(uint16_t reqid, const char *head, size_t head_len, const char *body,
                        size_t body_len);

#endif
