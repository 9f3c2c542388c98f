/*
 * zeus._http -- a strict fast path for parsing the common HTTP/1.1 request head.
 *
 * Theory of operation
 * -------------------
 * The front parses with httptools (llhttp), which calls back into Python once per URL piece,
 * header field and body piece.  For the ordinary request (a handful of well-formed headers, no
 * body or a small complete Content-Length body) that per-callback cost dominates.  This module
 * parses such a request in one pass over the buffer and returns every field at once.
 *
 * It is a fast path ONLY.  Whenever anything is unusual, incomplete, over a limit or invalid,
 * parse_request() DECLINES by returning None, and the caller feeds the same bytes to httptools,
 * which produces the proper error (400/413/414/431) or handles the rare feature (chunked bodies,
 * Expect, Upgrade, obs-fold, ...).  Declining is therefore always safe; accepting is safe only
 * if llhttp would accept the same bytes and read them the same way.  Every rule below errs on
 * the side of declining, and tests/unit/test_http_fastparse.py checks the accepted subset against
 * httptools differentially.
 *
 * Accepted subset (anything else declines):
 *   request line : METHOD SP TARGET SP "HTTP/1.1" | "HTTP/1.0" CRLF, METHOD one of seven
 *                  (case-sensitive), TARGET 1..max_line bytes in 0x21..0x7E that begins with
 *                  '/' or is "*" (OPTIONS only).
 *   header line  : token ":" OWS VALUE CRLF, VALUE bytes 0x20..0x7E or HTAB and not ending in
 *                  SP/HTAB; no obs-fold, no bare LF.
 *   semantics    : no Transfer-Encoding, Expect, Upgrade or Proxy-Connection (llhttp treats the
 *                  last like Connection); at most one Content-Length, plain digits, body complete
 *                  in the buffer and <= 1 MiB; exactly one Host in 1.1, at most one in 1.0; at
 *                  most one Connection whose value is exactly "close" or "keep-alive".
 *
 * frame_response_head() is the other direction: a worker's decoded response head framed as the
 * HTTP/1.1 head the client reads (see its comment).
 *
 * `end` is where the next pipelined request begins.  After a request whose keep_alive is False
 * the caller should not parse on: llhttp refuses data after such a message, this parser doesn't.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#define MAX_FAST_BODY ((Py_ssize_t)1 << 20) /* larger bodies stream through httptools */
#define MAX_CL_DIGITS 18                    /* 10**18 - 1 fits in Py_ssize_t (64-bit) */

/* Character classes, filled once at module init: one table lookup per byte in the hot loops. */
enum { C_TOKEN = 1, C_TARGET = 2, C_VALUE = 4 };
static unsigned char cls[256];
static unsigned char lower[256];

/* The seven methods and two versions, created once and shared by every result. */
static const char *const method_names[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH",
                                           "OPTIONS"};
static const Py_ssize_t method_lens[] = {3, 4, 4, 3, 6, 5, 7};
#define N_METHODS 7
#define M_OPTIONS 6
static PyObject *method_objs[N_METHODS];
static PyObject *version_11, *version_10;

/* Header names with a meaning here, plus common ones whose lower-cased bytes are shared. */
enum { H_PLAIN, H_HOST, H_CONNECTION, H_LENGTH, H_DECLINE };
typedef struct {
    const char *name; /* lower case */
    Py_ssize_t len;
    int kind;
    PyObject *obj; /* interned lower-case name */
} known_header;

static known_header known[] = {
    {"host", 4, H_HOST, NULL},
    {"user-agent", 10, H_PLAIN, NULL},
    {"accept", 6, H_PLAIN, NULL},
    {"accept-encoding", 15, H_PLAIN, NULL},
    {"accept-language", 15, H_PLAIN, NULL},
    {"connection", 10, H_CONNECTION, NULL},
    {"content-length", 14, H_LENGTH, NULL},
    {"content-type", 12, H_PLAIN, NULL},
    {"cookie", 6, H_PLAIN, NULL},
    {"transfer-encoding", 17, H_DECLINE, NULL},
    {"expect", 6, H_DECLINE, NULL},
    {"upgrade", 7, H_DECLINE, NULL},
    {"proxy-connection", 16, H_DECLINE, NULL},
};
#define N_KNOWN ((int)(sizeof(known) / sizeof(known[0])))

/* Case-insensitive compare of a token against a lower-case literal of the same length. */
static int
eq_lower(const unsigned char *p, const char *lit, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower[p[i]] != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* The known_header entry for a name, or NULL if it is not one of them. */
static known_header *
lookup_header(const unsigned char *p, Py_ssize_t n)
{
    for (int i = 0; i < N_KNOWN; i++)
        if (known[i].len == n && eq_lower(p, known[i].name, n))
            return &known[i];
    return NULL;
}

/* Saturating bound for the head-size cap, so huge limits cannot overflow Py_ssize_t. */
static Py_ssize_t
clamp(Py_ssize_t v)
{
    const Py_ssize_t hi = (Py_ssize_t)1 << 40;
    return v < 0 ? 0 : (v > hi ? hi : v);
}

/* The result tuple; steals `headers` (released on failure too).  content_length < 0: none. */
static PyObject *
make_result(int method, int v11, const unsigned char *target, Py_ssize_t tlen,
            PyObject *headers, int keep_alive, Py_ssize_t content_length, Py_ssize_t body_start)
{
    PyObject *result = PyTuple_New(8);
    if (result == NULL) {
        Py_DECREF(headers);
        return NULL;
    }
    PyObject *m = method_objs[method], *ver = v11 ? version_11 : version_10;
    PyObject *ka = keep_alive ? Py_True : Py_False;
    Py_INCREF(m);
    Py_INCREF(ver);
    Py_INCREF(ka);
    PyTuple_SET_ITEM(result, 0, m);
    PyTuple_SET_ITEM(result, 2, ver);
    PyTuple_SET_ITEM(result, 3, headers);
    PyTuple_SET_ITEM(result, 4, ka);
    PyObject *length = Py_None;
    if (content_length >= 0)
        length = PyLong_FromSsize_t(content_length);
    else
        Py_INCREF(length);
    PyObject *t = PyBytes_FromStringAndSize((const char *)target, tlen);
    PyObject *bs = PyLong_FromSsize_t(body_start);
    PyObject *en = PyLong_FromSsize_t(body_start + (content_length > 0 ? content_length : 0));
    /* Unfilled (NULL) slots are fine for the tuple's deallocator. */
    PyTuple_SET_ITEM(result, 1, t);
    PyTuple_SET_ITEM(result, 5, length);
    PyTuple_SET_ITEM(result, 6, bs);
    PyTuple_SET_ITEM(result, 7, en);
    if (t == NULL || length == NULL || bs == NULL || en == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

PyDoc_STRVAR(parse_request_doc,
"parse_request(data, start, max_line, max_headers, max_field, max_total, max_body, /)\n--\n\n"
"Parse the ordinary HTTP/1.x request that begins at data[start], or decline.\n\n"
"Returns (method, target, version, headers, keep_alive, content_length, body_start, end),\n"
"with header names lower-cased, or None whenever the request is incomplete, over a limit,\n"
"invalid or unusual, in which case the caller must parse the same bytes with httptools.");

static PyObject *
parse_request(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "parse_request() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "data must be bytes, not %.100s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    /* The limits come as one tuple, built once per connection: passed one by one, a compiled
       caller would box each (they are over 256) at every call. */
    if (!PyTuple_Check(args[2]) || PyTuple_GET_SIZE(args[2]) != 5) {
        PyErr_SetString(PyExc_TypeError, "limits must be a tuple (max_line, max_headers, "
                        "max_field, max_total, max_body)");
        return NULL;
    }
    Py_ssize_t lim[6]; /* start, max_line, max_headers, max_field, max_total, max_body */
    for (int i = 0; i < 6; i++) {
        lim[i] = PyLong_AsSsize_t(i == 0 ? args[1] : PyTuple_GET_ITEM(args[2], i - 1));
        if (lim[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    const Py_ssize_t start = lim[0], max_line = lim[1], max_headers = lim[2];
    const Py_ssize_t max_field = lim[3], max_total = lim[4], max_body = lim[5];
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > size) {
        PyErr_SetString(PyExc_ValueError, "start is outside the data");
        return NULL;
    }

    /* The head may not extend past `stop`: the data, or the limits plus framing (request line,
     * ": " and CRLF per field, a little optional whitespace), whichever is shorter.  A longer
     * head (padded with whitespace, say) is declined: httptools and the front's checks decide. */
    Py_ssize_t cap = clamp(max_line) + clamp(max_total) + 64 + 16 * clamp(max_headers);
    Py_ssize_t stop = (size - start > cap) ? start + cap : size;
    Py_ssize_t p = start;

    /* Request line: METHOD SP. */
    int method = -1;
    for (int i = 0; i < N_METHODS; i++) {
        const Py_ssize_t n = method_lens[i];
        if (stop - p > n && buf[p + n] == ' ' &&
            memcmp(buf + p, method_names[i], (size_t)n) == 0) {
            method = i;
            p += n + 1;
            break;
        }
    }
    if (method < 0)
        Py_RETURN_NONE;

    /* TARGET SP: visible ASCII only, origin-form, or "*" for OPTIONS. */
    const Py_ssize_t t0 = p;
    Py_ssize_t tstop = (stop - p > max_line) ? p + max_line : stop;
    while (p < tstop && (cls[buf[p]] & C_TARGET))
        p++;
    const Py_ssize_t tlen = p - t0;
    if (p >= stop || buf[p] != ' ' || tlen == 0)
        Py_RETURN_NONE; /* incomplete, too long, a bad byte, or empty */
    if (buf[t0] != '/' && !(method == M_OPTIONS && tlen == 1 && buf[t0] == '*'))
        Py_RETURN_NONE;
    p++;

    /* Version CRLF. */
    if (stop - p < 10 || memcmp(buf + p, "HTTP/1.", 7) != 0 || buf[p + 8] != '\r' ||
        buf[p + 9] != '\n' || (buf[p + 7] != '1' && buf[p + 7] != '0'))
        Py_RETURN_NONE;
    const int v11 = buf[p + 7] == '1';
    p += 10;

    /* Header lines up to the empty line. */
    PyObject *headers = PyList_New(0);
    if (headers == NULL)
        return NULL;
    Py_ssize_t count = 0, total = 0, content_length = -1;
    int hosts = 0, connections = 0, keep_alive = v11;
    for (;;) {
        if (stop - p < 2)
            goto decline; /* incomplete head */
        if (buf[p] == '\r') {
            if (buf[p + 1] != '\n')
                goto decline;
            p += 2;
            break;
        }
        /* NAME ":" -- a leading SP/HTAB (obs-fold), a bare LF or a space before the colon all
         * end the token at something other than ':' and decline here. */
        const Py_ssize_t n0 = p;
        while (p < stop && (cls[buf[p]] & C_TOKEN))
            p++;
        const Py_ssize_t nlen = p - n0;
        if (p >= stop || buf[p] != ':' || nlen == 0)
            goto decline;
        p++;
        while (p < stop && (buf[p] == ' ' || buf[p] == '\t'))
            p++;
        /* VALUE CRLF, with no trailing whitespace: llhttp's handling of it is its business. */
        const Py_ssize_t v0 = p;
        while (p < stop && (cls[buf[p]] & C_VALUE))
            p++;
        const Py_ssize_t vlen = p - v0;
        if (stop - p < 2 || buf[p] != '\r' || buf[p + 1] != '\n')
            goto decline;
        if (vlen > 0 && (buf[p - 1] == ' ' || buf[p - 1] == '\t'))
            goto decline;
        p += 2;

        /* Limits, counted exactly as the slow path counts them. */
        if (++count > max_headers || nlen + vlen > max_field)
            goto decline;
        total += nlen + vlen;
        if (total > max_total)
            goto decline;

        const unsigned char *v = buf + v0;
        known_header *k = lookup_header(buf + n0, nlen);
        if (k != NULL) {
            switch (k->kind) {
            case H_DECLINE:
                goto decline;
            case H_HOST:
                hosts++;
                break;
            case H_CONNECTION:
                if (++connections > 1)
                    goto decline;
                if (vlen == 5 && eq_lower(v, "close", 5))
                    keep_alive = 0;
                else if (vlen == 10 && eq_lower(v, "keep-alive", 10))
                    keep_alive = 1;
                else
                    goto decline; /* lists, "upgrade", ...: llhttp decides */
                break;
            case H_LENGTH:
                if (content_length >= 0 || vlen == 0 || vlen > MAX_CL_DIGITS)
                    goto decline;
                content_length = 0;
                for (Py_ssize_t i = 0; i < vlen; i++) {
                    if (v[i] < '0' || v[i] > '9')
                        goto decline;
                    content_length = content_length * 10 + (v[i] - '0');
                }
                break;
            default:
                break;
            }
        }

        PyObject *name;
        if (k != NULL) {
            name = k->obj;
            Py_INCREF(name);
        } else {
            name = PyBytes_FromStringAndSize(NULL, nlen);
            if (name == NULL)
                goto error;
            unsigned char *out = (unsigned char *)PyBytes_AS_STRING(name);
            for (Py_ssize_t i = 0; i < nlen; i++)
                out[i] = lower[buf[n0 + i]];
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)v, vlen);
        if (value == NULL) {
            Py_DECREF(name);
            goto error;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto error;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        int rc = PyList_Append(headers, pair);
        Py_DECREF(pair);
        if (rc < 0)
            goto error;
    }

    if (v11 ? hosts != 1 : hosts > 1)
        goto decline; /* RFC 9112 3.2: the slow path answers 400 */
    /* Body: only a complete, small, within-limit Content-Length body is taken here. */
    if (content_length >= 0 &&
        (content_length > MAX_FAST_BODY || (max_body > 0 && content_length > max_body) ||
         size - p < content_length))
        goto decline;
    return make_result(method, v11, buf + t0, tlen, headers, keep_alive, content_length, p);

decline:
    Py_DECREF(headers);
    Py_RETURN_NONE;
error:
    Py_DECREF(headers);
    return NULL;
}

/* ---- The front's response framing (zeus.front.http) ----
   A worker's response head, decoded and checked, becomes the HTTP/1.1 head the client reads.
   Policy is the front's (HttpProtocol._begin decides keep-alive and whether a body may follow);
   this is the per-response loop over the headers in one call: hop-by-hop fields dropped
   (a "close" in Connection ends keep-alive), the first well-formed Content-Length kept and any
   other dropped, chunked framing when there is a body and no length, Server and Date added
   when the application did not set them, and the Connection field last. */

static int
name_is(PyObject *name, const char *lit, Py_ssize_t n)
{
    return PyBytes_GET_SIZE(name) == n && memcmp(PyBytes_AS_STRING(name), lit, (size_t)n) == 0;
}

/* Header name classes the framing looks at. */
enum { F_PASS, F_HOP, F_CONNECTION, F_LENGTH, F_SERVER, F_DATE };

static int
frame_class(PyObject *name)
{
    switch (PyBytes_GET_SIZE(name)) {
    case 2: return name_is(name, "te", 2) ? F_HOP : F_PASS;
    case 4: return name_is(name, "date", 4) ? F_DATE : F_PASS;
    case 6: return name_is(name, "server", 6) ? F_SERVER : F_PASS;
    case 7:
        return name_is(name, "upgrade", 7) || name_is(name, "trailer", 7) ? F_HOP : F_PASS;
    case 10:
        if (name_is(name, "connection", 10))
            return F_CONNECTION;
        return name_is(name, "keep-alive", 10) ? F_HOP : F_PASS;
    case 14: return name_is(name, "content-length", 14) ? F_LENGTH : F_PASS;
    case 16: return name_is(name, "proxy-connection", 16) ? F_HOP : F_PASS;
    case 17: return name_is(name, "transfer-encoding", 17) ? F_HOP : F_PASS;
    default: return F_PASS;
    }
}

/* Whether ``value`` holds "close", in any case (as ``b"close" in value.lower()``). */
static int
says_close(PyObject *value)
{
    const char *v = PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    for (Py_ssize_t i = 0; i + 5 <= n; i++) {
        int j = 0;
        while (j < 5 && (v[i + j] | 0x20) == "close"[j])
            j++;
        if (j == 5)
            return 1;
    }
    return 0;
}

static int
all_digits(PyObject *value)
{
    const char *v = PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return 1;
}

#define LIT(s) s, (sizeof(s) - 1)

static char *
put(char *p, const char *s, Py_ssize_t n)
{
    memcpy(p, s, (size_t)n);
    return p + n;
}

/* frame_response_head(status_line, headers, keep, no_body, http11, date_field)
     -> (head, keep, length, chunked)
   status_line: b"HTTP/1.1 200 OK\r\n"; headers: list of (bytes, bytes) with lower-case names;
   date_field: b"date: ...\r\n".  length is the kept Content-Length, or None. */
static PyObject *
http_frame_response_head(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyBytes_Check(args[0]) || !PyList_Check(args[1]) ||
        !PyBytes_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "frame_response_head(status_line: bytes, headers: "
                                         "list, keep, no_body, http11, date_field: bytes)");
        return NULL;
    }
    PyObject *headers = args[1];
    int keep = PyObject_IsTrue(args[2]), no_body = PyObject_IsTrue(args[3]),
        http11 = PyObject_IsTrue(args[4]);
    if (keep < 0 || no_body < 0 || http11 < 0)
        return NULL;
    Py_ssize_t nh = PyList_GET_SIZE(headers);
    /* First pass: check the pairs, classify, size the head. */
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t length_at = -1;
    int has_server = 0, has_date = 0;
    unsigned char stack_cls[64];
    unsigned char *cls = nh <= 64 ? stack_cls : PyMem_Malloc((size_t)nh);
    if (!cls)
        return PyErr_NoMemory();
    PyObject *res = NULL, *length = NULL;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "headers must be (bytes, bytes) pairs");
            goto out;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        int c = frame_class(name);
        if (c == F_CONNECTION) {
            if (says_close(value))
                keep = 0;
            c = F_HOP;
        } else if (c == F_LENGTH) {
            if (length_at >= 0 || !all_digits(value))
                c = F_HOP; /* a second or malformed length is dropped, never forwarded */
            else
                length_at = i;
        } else if (c == F_SERVER) {
            has_server = 1;
        } else if (c == F_DATE) {
            has_date = 1;
        }
        cls[i] = (unsigned char)c;
        if (c != F_HOP)
            size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4;
    }
    int chunked = 0;
    if (!no_body && length_at < 0) {
        if (http11)
            chunked = 1;
        else
            keep = 0;
    }
    static const char TE[] = "transfer-encoding: chunked\r\n", SERVER[] = "server: zeus\r\n",
                      KEEP[] = "connection: keep-alive\r\n\r\n", CLOSE[] = "connection: close\r\n\r\n";
    size += (chunked ? (Py_ssize_t)sizeof(TE) - 1 : 0) +
            (has_server ? 0 : (Py_ssize_t)sizeof(SERVER) - 1) +
            (has_date ? 0 : PyBytes_GET_SIZE(args[5])) +
            (keep ? (Py_ssize_t)sizeof(KEEP) - 1 : (Py_ssize_t)sizeof(CLOSE) - 1);
    PyObject *head = PyBytes_FromStringAndSize(NULL, size);
    if (!head)
        goto out;
    char *p = PyBytes_AS_STRING(head);
    p = put(p, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]));
    for (Py_ssize_t i = 0; i < nh; i++) {
        if (cls[i] == F_HOP)
            continue;
        PyObject *pair = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        p = put(p, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        p = put(p, LIT(": "));
        p = put(p, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        p = put(p, LIT("\r\n"));
    }
    if (chunked)
        p = put(p, LIT(TE));
    if (!has_server)
        p = put(p, LIT(SERVER));
    if (!has_date)
        p = put(p, PyBytes_AS_STRING(args[5]), PyBytes_GET_SIZE(args[5]));
    p = keep ? put(p, LIT(KEEP)) : put(p, LIT(CLOSE));
    if (length_at >= 0) {
        PyObject *value = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, length_at), 1);
        length = PyLong_FromString(PyBytes_AS_STRING(value), NULL, 10);
        if (!length) {
            Py_DECREF(head);
            goto out;
        }
    } else {
        length = Py_None;
        Py_INCREF(length);
    }
    res = PyTuple_Pack(4, head, keep ? Py_True : Py_False, length, chunked ? Py_True : Py_False);
    Py_DECREF(head);
out:
    Py_XDECREF(length);
    if (cls != stack_cls)
        PyMem_Free(cls);
    return res;
}

#undef LIT

/* ---- end of the front's response framing ---- */

static PyMethodDef module_methods[] = {
    {"parse_request", (PyCFunction)(void (*)(void))parse_request, METH_FASTCALL,
     parse_request_doc},
    {"frame_response_head", (PyCFunction)(void (*)(void))http_frame_response_head,
     METH_FASTCALL, "Frame a worker's response head for the client: (head, keep, length, "
     "chunked)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef http_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "zeus._http",
    .m_doc = "A strict one-pass parser for the common HTTP/1.x request; declines the rest.",
    .m_size = -1,
    .m_methods = module_methods,
};

/* Fill the character tables (RFC 9110 token, request-target and field-value subsets). */
static void
init_tables(void)
{
    static const char tspecials[] = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        lower[c] = (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
        unsigned char f = 0;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c != 0 && strchr(tspecials, c) != NULL))
            f |= C_TOKEN;
        if (c >= 0x21 && c <= 0x7E)
            f |= C_TARGET;
        if ((c >= 0x20 && c <= 0x7E) || c == '\t')
            f |= C_VALUE;
        cls[c] = f;
    }
}

PyMODINIT_FUNC
PyInit__http(void)
{
    static int ready = 0;
    init_tables();
    if (!ready) { /* the shared objects live as long as the process */
        for (int i = 0; i < N_METHODS; i++)
            if ((method_objs[i] = PyBytes_FromString(method_names[i])) == NULL)
                return NULL;
        for (int i = 0; i < N_KNOWN; i++)
            if ((known[i].obj = PyBytes_FromStringAndSize(known[i].name, known[i].len)) == NULL)
                return NULL;
        if ((version_11 = PyUnicode_InternFromString("1.1")) == NULL ||
            (version_10 = PyUnicode_InternFromString("1.0")) == NULL)
            return NULL;
        ready = 1;
    }
    return PyModule_Create(&http_module);
}
