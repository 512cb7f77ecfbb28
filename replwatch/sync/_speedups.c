/* Optional accelerator of the syncer's two per-item loops, each the compiled form of a
 * pure-Python function that stays the reference (both are tested against each other:
 * tests/test_sync_speedups.py):
 * - string_run: rdb.string_run_py, a run of plain string keys of the snapshot formatted as
 *   RESP `SET key value` commands, or one `MSET` (short LZF values decoded in it);
 * - split_stream: the replication stream's whole commands from a position, a run to forward
 *   as it is, then the first command a rule must look at: what stream_split's
 *   take_commands + marked + encoded_length find a read at a time with hiredis.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static Py_ssize_t digits(Py_ssize_t n) {
    Py_ssize_t d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

static char *put_bulk(char *out, const unsigned char *data, Py_ssize_t n) {
    int w = sprintf(out, "$%zd\r\n", n);
    out += w;
    memcpy(out, data, (size_t)n);
    out += n;
    *out++ = '\r';
    *out++ = '\n';
    return out;
}

/* liblzf's lzf_d.c: literal runs and back references from in[0:n] into out, which must come
 * to exactly `expected` bytes; every read and write is bounds-checked. 1: done, 0: not
 * valid LZF of that length. */
static int lzf_expand(const unsigned char *ip, Py_ssize_t n, unsigned char *out,
                      Py_ssize_t expected) {
    unsigned char *o = out;
    unsigned char *const oe = out + expected;
    const unsigned char *const ie = ip + n;
    while (ip < ie) {
        unsigned int ctrl = *ip++;
        if (ctrl < 32) { /* a literal run of ctrl + 1 bytes */
            Py_ssize_t run = (Py_ssize_t)ctrl + 1;
            if (run > ie - ip || run > oe - o)
                return 0;
            memcpy(o, ip, (size_t)run);
            o += run;
            ip += run;
        } else { /* a back reference: length 3..264, distance 1..8192 */
            Py_ssize_t length = ctrl >> 5;
            if (length == 7) {
                if (ip >= ie)
                    return 0;
                length += *ip++;
            }
            length += 2;
            if (ip >= ie)
                return 0;
            Py_ssize_t distance = (Py_ssize_t)(((ctrl & 0x1f) << 8) | *ip++) + 1;
            if (distance > o - out || length > oe - o)
                return 0;
            const unsigned char *ref = o - distance;
            while (length--) /* forward, byte by byte: an overlap repeats the pattern */
                *o++ = *ref++;
        }
    }
    return o == oe;
}

/* A 6- or 14-bit RDB length at p: 1 read (*value, *after), 0 anything else. */
static int short_length(const unsigned char *buf, Py_ssize_t p, Py_ssize_t end,
                        Py_ssize_t *value, Py_ssize_t *after) {
    if (p >= end)
        return 0;
    unsigned int c = buf[p];
    if (c < 0x40) {
        *value = c;
        *after = p + 1;
        return 1;
    }
    if (c < 0x80 && p + 1 < end) {
        *value = ((c & 0x3F) << 8) | buf[p + 1];
        *after = p + 2;
        return 1;
    }
    return 0;
}

/* The next entry at p (its key's length byte): 1 when it is taken, with its spans; an LZF
 * value (encoding 0xC3, both lengths short) gives its compressed span and *plain >= 0, and
 * `check` decodes it once into scratch (invalid: not taken). Plain values: *plain = -1. */
static int entry_at(const unsigned char *buf, Py_ssize_t p, Py_ssize_t end, Py_ssize_t *ks,
                    Py_ssize_t *ke, Py_ssize_t *vs, Py_ssize_t *ve, Py_ssize_t *plain,
                    unsigned char *scratch) {
    unsigned int b;
    if (p + 1 >= end)
        return 0;
    b = buf[p];
    if (b < 0x40) {
        *ks = p + 1;
        *ke = *ks + b;
    } else if (b < 0x80) {
        *ks = p + 2;
        *ke = *ks + (((b & 0x3F) << 8) | buf[p + 1]);
    } else {
        return 0;
    }
    if (*ke + 1 >= end || *ke == *ks || buf[*ks] == '_')
        return 0;
    b = buf[*ke];
    *plain = -1;
    if (b < 0x40) {
        *vs = *ke + 1;
        *ve = *vs + b;
    } else if (b < 0x80) {
        *vs = *ke + 2;
        *ve = *vs + (((b & 0x3F) << 8) | buf[*ke + 1]);
    } else if (b == 0xC3) {
        Py_ssize_t compressed, q;
        if (!short_length(buf, *ke + 1, end, &compressed, &q) ||
            !short_length(buf, q, end, plain, vs))
            return 0;
        *ve = *vs + compressed;
        if (*ve > end)
            return 0;
        if (scratch != NULL && !lzf_expand(buf + *vs, compressed, scratch, *plain))
            return 0;
    } else {
        return 0;
    }
    return *ve <= end;
}

/* string_run(buf, pos, end, limit, mset) -> (commands: bytes, count: int, pos: int):
 * one `SET key value` per key, or (mset) one `MSET key value …` for the run. */
static PyObject *string_run(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, end, limit, p, ks, ke, vs, ve, plain, count = 0, total = 0, last;
    unsigned char scratch[16384]; /* an LZF value decoded once to check it (14-bit length) */
    int mset;
    const unsigned char *buf;
    PyObject *data;
    char *out;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnnp", &view, &pos, &end, &limit, &mset))
        return NULL;
    buf = (const unsigned char *)view.buf;
    if (end > view.len)
        end = view.len;
    if (pos < 0 || pos > end)
        pos = end; /* nothing to take */
    last = pos;
    p = pos;
    while (pos >= 0 && entry_at(buf, p, end, &ks, &ke, &vs, &ve, &plain, scratch)) {
        Py_ssize_t size = plain >= 0 ? plain : ve - vs;
        total += (mset ? 10 : 23) + digits(ke - ks) + digits(size) + (ke - ks) + size;
        count++;
        last = ve;
        if (count >= limit || ve >= end || buf[ve] != 0)
            break;
        p = ve + 1;
    }
    if (mset && count)
        total += 1 + digits(2 * count + 1) + 2 + 10; /* *<argc>\r\n$4\r\nMSET\r\n */
    data = PyBytes_FromStringAndSize(NULL, total);
    if (data == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    out = PyBytes_AS_STRING(data);
    if (mset && count) {
        out += sprintf(out, "*%zd\r\n", 2 * count + 1);
        memcpy(out, "$4\r\nMSET\r\n", 10);
        out += 10;
    }
    p = pos;
    for (Py_ssize_t i = 0; i < count; i++) {
        entry_at(buf, p, end, &ks, &ke, &vs, &ve, &plain, NULL);
        if (!mset) {
            memcpy(out, "*3\r\n$3\r\nSET\r\n", 13);
            out += 13;
        }
        out = put_bulk(out, buf + ks, ke - ks);
        if (plain >= 0) { /* checked in the first pass */
            out += sprintf(out, "$%zd\r\n", plain);
            lzf_expand(buf + vs, ve - vs, (unsigned char *)out, plain);
            out += plain;
            *out++ = '\r';
            *out++ = '\n';
        } else {
            out = put_bulk(out, buf + vs, ve - vs);
        }
        p = ve + 1;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nnn)", data, count, last);
}

/* ------------------------------------------------------------------ split_stream */

#define MAX_BULK (512LL * 1024 * 1024)
#define MAX_ARGS (1024LL * 1024 * 1024)

/* A number and its CRLF at p: 1 read (value, *after), 0 not all here, -1 malformed. */
static int read_number(const unsigned char *buf, Py_ssize_t p, Py_ssize_t end, long long limit,
                       long long *value, Py_ssize_t *after) {
    long long v = 0;
    Py_ssize_t q = p;
    while (q < end && buf[q] >= '0' && buf[q] <= '9') {
        v = v * 10 + (buf[q] - '0');
        if (v > limit)
            return -1;
        q++;
    }
    if (q >= end)
        return 0;
    if (q == p || buf[q] != '\r')
        return -1;
    if (q + 1 >= end)
        return 0;
    if (buf[q + 1] != '\n')
        return -1;
    *value = v;
    *after = q + 2;
    return 1;
}

typedef struct {
    Py_ssize_t end;      /* where the command ends */
    long long argc;
    Py_ssize_t name, name_len, key, key_len; /* spans of argv[0], argv[1] (key_len -1: none) */
} command_t;

/* The command at p: 1 whole (in *c), 0 not all here, -1 malformed (*why says how). */
static int read_command(const unsigned char *buf, Py_ssize_t p, Py_ssize_t end, command_t *c,
                        const char **why) {
    long long argc, size;
    Py_ssize_t q;
    int got;
    if (p >= end)
        return 0;
    if (buf[p] != '*') {
        *why = "is not a stream of commands (no array where a command begins)";
        return -1;
    }
    got = read_number(buf, p + 1, end, MAX_ARGS, &argc, &q);
    if (got <= 0) {
        *why = "holds a command with a bad argument count";
        return got;
    }
    if (argc < 1) {
        *why = "holds an empty command";
        return -1;
    }
    c->argc = argc;
    c->key_len = -1;
    for (long long i = 0; i < argc; i++) {
        if (q >= end)
            return 0;
        if (buf[q] != '$') {
            *why = "holds a command whose arguments are not all bulk strings";
            return -1;
        }
        got = read_number(buf, q + 1, end, MAX_BULK, &size, &q);
        if (got <= 0) {
            *why = "holds an argument with a bad length";
            return got;
        }
        if (q + size + 2 > end)
            return 0;
        if (buf[q + size] != '\r' || buf[q + size + 1] != '\n') {
            *why = "holds an argument that does not end where its length says";
            return -1;
        }
        if (i == 0) {
            c->name = q;
            c->name_len = (Py_ssize_t)size;
        } else if (i == 1) {
            c->key = q;
            c->key_len = (Py_ssize_t)size;
        }
        q += size + 2;
    }
    c->end = q;
    return 1;
}

/* Does a rule look at this command (stream_split.marked's rules)? */
static int is_marked(const unsigned char *buf, const command_t *c, PyObject *always,
                     PyObject *counted, const char *own, Py_ssize_t own_len) {
    char upper[32];
    Py_ssize_t n = c->name_len;
    if (own_len > 0 && c->key_len >= own_len && memcmp(buf + c->key, own, own_len) == 0)
        return 1;
    if (n > (Py_ssize_t)sizeof(upper))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = buf[c->name + i];
        upper[i] = (char)((ch >= 'a' && ch <= 'z') ? ch - 32 : ch);
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(always); i++) {
        PyObject *name = PyTuple_GET_ITEM(always, i);
        if (PyBytes_GET_SIZE(name) == n && memcmp(PyBytes_AS_STRING(name), upper, n) == 0)
            return 1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(counted); i++) {
        PyObject *pair = PyTuple_GET_ITEM(counted, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        if (PyBytes_GET_SIZE(name) == n && memcmp(PyBytes_AS_STRING(name), upper, n) == 0)
            return c->argc > PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
    }
    return 0;
}

static PyObject *argv_of(const unsigned char *buf, Py_ssize_t p, long long argc) {
    PyObject *argv = PyList_New((Py_ssize_t)argc);
    long long size;
    Py_ssize_t q;
    if (argv == NULL)
        return NULL;
    read_number(buf, p + 1, PY_SSIZE_T_MAX, MAX_ARGS, &size, &q);
    for (long long i = 0; i < argc; i++) {
        PyObject *arg;
        read_number(buf, q + 1, PY_SSIZE_T_MAX, MAX_BULK, &size, &q);
        arg = PyBytes_FromStringAndSize((const char *)buf + q, (Py_ssize_t)size);
        if (arg == NULL) {
            Py_DECREF(argv);
            return NULL;
        }
        PyList_SET_ITEM(argv, (Py_ssize_t)i, arg);
        q += size + 2;
    }
    return argv;
}

/* split_stream(raw, pos, room, always, counted, own_prefix)
 *   -> (run_end, run_count, marked argv or None, marked_end) */
static PyObject *split_stream(PyObject *self, PyObject *args) {
    Py_buffer view, own;
    Py_ssize_t pos, room, p, count = 0;
    PyObject *always, *counted, *marked = Py_None, *result;
    const unsigned char *buf;
    command_t c;
    const char *why = NULL;
    int got;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnO!O!y*", &view, &pos, &room, &PyTuple_Type, &always,
                          &PyTuple_Type, &counted, &own))
        return NULL;
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyBuffer_Release(&own);
        PyErr_SetString(PyExc_ValueError, "holds no command at that position");
        return NULL;
    }
    buf = (const unsigned char *)view.buf;
    p = pos;
    c.end = pos;
    while (count < room) {
        got = read_command(buf, p, view.len, &c, &why);
        if (got < 0) {
            PyBuffer_Release(&view);
            PyBuffer_Release(&own);
            PyErr_SetString(PyExc_ValueError, why);
            return NULL;
        }
        if (got == 0)
            break;
        if (is_marked(buf, &c, always, counted, own.buf, own.len)) {
            marked = argv_of(buf, p, c.argc);
            if (marked == NULL) {
                PyBuffer_Release(&view);
                PyBuffer_Release(&own);
                return NULL;
            }
            break;
        }
        count++;
        p = c.end;
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&own);
    if (marked == Py_None) {
        Py_INCREF(Py_None);
        result = Py_BuildValue("(nnNn)", p, count, marked, p);
    } else {
        result = Py_BuildValue("(nnNn)", p, count, marked, c.end);
    }
    return result;
}

/* lzf_decompress(data, expected_length) -> bytes, or None when the data is not valid LZF
 * expanding to exactly expected_length bytes (rdb.lzf_decompress, the Python path, then
 * runs to say what is wrong). */
static PyObject *lzf_decompress(PyObject *self, PyObject *args) {
    Py_buffer in;
    Py_ssize_t expected;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &in, &expected))
        return NULL;
    if (expected < 0) {
        PyBuffer_Release(&in);
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, expected);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    int ok = lzf_expand((const unsigned char *)in.buf, in.len,
                        (unsigned char *)PyBytes_AS_STRING(out), expected);
    PyBuffer_Release(&in);
    if (!ok) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"string_run", string_run, METH_VARARGS,
     "string_run(buf, pos, end, limit, mset) -> (SET or MSET commands, count, position after)"},
    {"split_stream", split_stream, METH_VARARGS,
     "split_stream(raw, pos, room, always, counted, own_prefix) -> "
     "(run_end, run_count, marked argv or None, marked_end)"},
    {"lzf_decompress", lzf_decompress, METH_VARARGS,
     "lzf_decompress(data, expected_length) -> bytes, or None when it is not valid LZF"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups",
    "Optional accelerator of the syncer's per-item loops.", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
