/* Frames of JSON events -> one column per wanted key, in Arrow's memory layout (channels/frame_columns.py).

   The input is a list of WebSocket frames (str); each frame must be a JSON array of flat JSON objects
   (Polygon's events). For each wanted key the output is one Arrow column: a validity bitmap and its values
   (int64, double, bool bits, string offsets + data, or a list of int64 as offsets + values). Unknown keys
   are skipped (their values still validated as JSON). A missing key or `null` is a null.

   This is a strict RFC 8259 parser for that shape and nothing else: any input outside it (not JSON, a frame
   that is not an array, an element that is not an object, a value of the wrong JSON type for its column, a
   repeated key, an int64 overflow, a lone surrogate, nesting deeper than MAX_DEPTH) makes the whole call
   return None, and the caller hands the frames to pyarrow's JSON reader, then to the per-event path, which
   decide and count them. So this code only ever has to be right about well-formed input; it never has to
   explain bad input. Every read is bounds-checked against the end of the buffer. The GIL is released while
   parsing (the frames' UTF-8 forms are taken first, and the frames held), except for the rare number whose
   exact conversion needs Python's correctly rounded strtod.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_KEYS 32
#define MAX_DEPTH 64
#define MAX_KEY_BYTES 64

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static int buf_grow(Buf *b, size_t more) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int buf_reserve(Buf *b, size_t more) {
    return b->len + more <= b->cap ? 0 : buf_grow(b, more);
}

static inline int buf_put(Buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int buf_zeros(Buf *b, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memset(b->data + b->len, 0, n);
    b->len += n;
    return 0;
}

/* One wanted key's column, and the value the current object gave it. */
typedef struct {
    const char *key;
    size_t key_len;
    char kind;           /* 's' string, 'i' int64, 'd' double, 'b' bool, 'l' list of int64,
                            'D' decimal128(38, 18) from a string of at most 20 + 18 digits */
    Buf validity;        /* a bit per row */
    Buf values;          /* int64 / double / bool bits / string data / list child int64 */
    Buf offsets;         /* int32, strings and lists */
    int64_t null_count;
    /* the current object's value */
    int seen, is_null;
    int64_t i;
    double d;
    int b;
    __int128 decimal;
    size_t value_start;  /* strings and lists: where this row's bytes/items begin in `values` */
} Column;

typedef struct {
    const char *p, *end;
    Column *columns;
    int ncolumns;
    int64_t rows;
    Buf frame_counts;    /* int64 per frame: its events */
    Buf scratch;         /* an unescaped key, a number needing Python's strtod */
    int next_guess;      /* the column the next key most likely names */
    PyThreadState *released;
} Parser;

enum { OK = 0, REFUSE = 1, NO_MEMORY = 2 };

static inline void skip_ws(Parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static inline int expect(Parser *ps, char c) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != c) return REFUSE;
    ps->p++;
    return OK;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return REFUSE;
    }
    *out = v;
    return OK;
}

static int put_utf8(Buf *out, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    return buf_put(out, u, n) ? NO_MEMORY : OK;
}

/* A JSON string at ps->p (the opening quote); its decoded bytes appended to `out` (NULL: only validated). */
static int parse_string(Parser *ps, Buf *out) {
    const char *p = ps->p + 1, *end = ps->end;
    for (;;) {
        const char *run = p;
        while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) p++;
        if (out && p > run && buf_put(out, run, (size_t)(p - run))) return NO_MEMORY;
        if (p >= end || (unsigned char)*p < 0x20) return REFUSE;   /* unterminated, or a raw control byte */
        if (*p == '"') break;
        if (p + 1 >= end) return REFUSE;
        char e = p[1];
        const char *plain = NULL;
        switch (e) {
            case '"': plain = "\""; break;
            case '\\': plain = "\\"; break;
            case '/': plain = "/"; break;
            case 'b': plain = "\b"; break;
            case 'f': plain = "\f"; break;
            case 'n': plain = "\n"; break;
            case 'r': plain = "\r"; break;
            case 't': plain = "\t"; break;
            case 'u': break;
            default: return REFUSE;
        }
        if (plain) {
            if (out && buf_put(out, plain, 1)) return NO_MEMORY;
            p += 2;
            continue;
        }
        unsigned cp, low;
        if (end - p < 6 || hex4(p + 2, &cp)) return REFUSE;
        p += 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return REFUSE;           /* a lone low surrogate */
        if (cp >= 0xD800 && cp <= 0xDBFF) {                       /* must pair with a low one */
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low)) return REFUSE;
            if (low < 0xDC00 || low > 0xDFFF) return REFUSE;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            p += 6;
        }
        if (out) {
            int status = put_utf8(out, cp);
            if (status) return status;
        }
    }
    ps->p = p + 1;
    return OK;
}

/* A JSON number's grammar at ps->p; its parts for the conversions. */
typedef struct {
    const char *start, *stop;
    int negative, integral;          /* integral: no fraction, no exponent */
    uint64_t mantissa;               /* the significant digits, while they fit (digits <= 19) */
    int digits;                      /* significant digits counted (leading zeros of the mantissa skipped) */
    int64_t exponent10;              /* value = mantissa * 10^exponent10 when digits <= 19 */
} Number;

/* Inlined at each caller, with the parts in registers: a number is most of an event's bytes. */
static inline __attribute__((always_inline)) int scan_number(Parser *ps, Number *n) {
    const char *p = ps->p, *end = ps->end;
    uint64_t mantissa = 0;
    int digits = 0, negative = 0, integral = 1;
    int64_t exponent10 = 0;
    const char *start = p;
    if (p < end && *p == '-') { negative = 1; p++; }
    if (p >= end || *p < '0' || *p > '9') return REFUSE;
    if (*p == '0') {
        p++;
        if (p < end && *p >= '0' && *p <= '9') return REFUSE;    /* no leading zeros */
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits < 19) mantissa = mantissa * 10 + (uint64_t)(*p - '0');
            else exponent10++;
            digits++;
            p++;
        }
    }
    if (p < end && *p == '.') {
        integral = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return REFUSE;
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits == 0 && *p == '0') { exponent10--; p++; continue; }   /* 0.000x */
            if (digits < 19) { mantissa = mantissa * 10 + (uint64_t)(*p - '0'); exponent10--; }
            digits++;
            p++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integral = 0;
        p++;
        int negative_exp = 0;
        if (p < end && (*p == '+' || *p == '-')) { negative_exp = *p == '-'; p++; }
        if (p >= end || *p < '0' || *p > '9') return REFUSE;
        int64_t e = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (e < 100000) e = e * 10 + (*p - '0');
            p++;
        }
        exponent10 += negative_exp ? -e : e;
    }
    *n = (Number){.start = start, .stop = p, .negative = negative, .integral = integral, .mantissa = mantissa,
                  .digits = digits, .exponent10 = exponent10};
    ps->p = p;
    return OK;
}

static int number_to_int64(const Number *n, int64_t *out) {
    if (!n->integral || n->digits > 19) return REFUSE;
    if (n->negative) {
        if (n->mantissa > (uint64_t)INT64_MAX + 1) return REFUSE;
        *out = n->mantissa == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)n->mantissa;
    } else {
        if (n->mantissa > (uint64_t)INT64_MAX) return REFUSE;
        *out = (int64_t)n->mantissa;
    }
    return OK;
}

static const double POWERS_OF_TEN[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Correctly rounded: exact operands and one IEEE operation (Clinger's fast path) when the mantissa fits in
   53 bits and |exponent| <= 22; otherwise Python's own correctly rounded strtod, under the GIL. */
static int number_to_double(Parser *ps, const Number *n, double *out) {
    if (n->digits <= 19 && n->mantissa <= (1ULL << 53) && n->exponent10 >= -22 && n->exponent10 <= 22) {
        double value = (double)n->mantissa;
        value = n->exponent10 < 0 ? value / POWERS_OF_TEN[-n->exponent10] : value * POWERS_OF_TEN[n->exponent10];
        *out = n->negative ? -value : value;
        return OK;
    }
    ps->scratch.len = 0;
    if (buf_put(&ps->scratch, n->start, (size_t)(n->stop - n->start)) || buf_put(&ps->scratch, "", 1))
        return NO_MEMORY;
    PyEval_RestoreThread(ps->released);
    double value = PyOS_string_to_double(ps->scratch.data, NULL, NULL);
    int failed = value == -1.0 && PyErr_Occurred();
    if (failed) PyErr_Clear();
    ps->released = PyEval_SaveThread();
    if (failed || value == Py_HUGE_VAL || value == -Py_HUGE_VAL) return REFUSE;   /* Arrow decides those */
    *out = value;
    return OK;
}

static int match_literal(Parser *ps, const char *word, size_t len) {
    if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len) != 0) return REFUSE;
    ps->p += len;
    return OK;
}

static int skip_value(Parser *ps, int depth);

static int skip_container(Parser *ps, int depth, char close) {
    if (depth > MAX_DEPTH) return REFUSE;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) { ps->p++; return OK; }
    for (;;) {
        int status;
        if (close == '}') {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return REFUSE;
            if ((status = parse_string(ps, NULL))) return status;
            if ((status = expect(ps, ':'))) return status;
        }
        if ((status = skip_value(ps, depth + 1))) return status;
        skip_ws(ps);
        if (ps->p >= ps->end) return REFUSE;
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == close) { ps->p++; return OK; }
        return REFUSE;
    }
}

/* Any JSON value, validated and dropped (a key no column wants). */
static int skip_value(Parser *ps, int depth) {
    Number n;
    skip_ws(ps);
    if (ps->p >= ps->end) return REFUSE;
    switch (*ps->p) {
        case '"': return parse_string(ps, NULL);
        case '{': return skip_container(ps, depth, '}');
        case '[': return skip_container(ps, depth, ']');
        case 't': return match_literal(ps, "true", 4);
        case 'f': return match_literal(ps, "false", 5);
        case 'n': return match_literal(ps, "null", 4);
        default: return scan_number(ps, &n);
    }
}

static int parse_int_list(Parser *ps, Column *c) {
    ps->p++;   /* '[' */
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') { ps->p++; return OK; }
    for (;;) {
        Number n;
        int64_t v;
        int status;
        skip_ws(ps);
        if ((status = scan_number(ps, &n)) || (status = number_to_int64(&n, &v))) return status;
        if (buf_put(&c->values, &v, sizeof v)) return NO_MEMORY;
        skip_ws(ps);
        if (ps->p >= ps->end) return REFUSE;
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == ']') { ps->p++; return OK; }
        return REFUSE;
    }
}

static const uint64_t POWERS_OF_TEN_INT[] = {1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL,
    10000000ULL, 100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
    10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
    1000000000000000000ULL};

/* A decimal string -?[0-9]{1,20}(.[0-9]{1,18})? as an integer count of 1e-18 (pyarrow's cast of such a
   string to decimal128(38, 18)); any other text is refused. */
static int parse_decimal(Parser *ps, Column *c) {
    int status;
    ps->scratch.len = 0;
    if ((status = parse_string(ps, &ps->scratch))) return status;
    const char *p = ps->scratch.data, *end = p + ps->scratch.len;
    int negative = p < end && *p == '-';
    p += negative;
    unsigned __int128 value = 0;
    int whole = 0, fraction = 0;
    while (p < end && *p >= '0' && *p <= '9') { value = value * 10 + (unsigned)(*p - '0'); whole++; p++; }
    if (whole == 0 || whole > 20) return REFUSE;
    if (p < end && *p == '.') {
        p++;
        while (p < end && *p >= '0' && *p <= '9') { value = value * 10 + (unsigned)(*p - '0'); fraction++; p++; }
        if (fraction == 0 || fraction > 18) return REFUSE;
    }
    if (p != end) return REFUSE;
    value *= POWERS_OF_TEN_INT[18 - fraction];   /* one multiplication: a loop of them was a fifth of the parse */
    c->decimal = negative ? -(__int128)value : (__int128)value;
    return OK;
}

/* The value of a wanted key, into its column's slot for the current row. */
static int parse_wanted(Parser *ps, Column *c) {
    skip_ws(ps);
    if (ps->p >= ps->end) return REFUSE;
    if (c->seen) return REFUSE;   /* a repeated key: the reader decides which one counts */
    c->seen = 1;
    if (*ps->p == 'n') {
        c->is_null = 1;
        return match_literal(ps, "null", 4);
    }
    c->is_null = 0;
    Number n;
    int status;
    switch (c->kind) {
        case 's':
            if (*ps->p != '"') return REFUSE;
            return parse_string(ps, &c->values);
        case 'i':
            if ((status = scan_number(ps, &n))) return status;
            return number_to_int64(&n, &c->i);
        case 'd':
            if ((status = scan_number(ps, &n))) return status;
            return number_to_double(ps, &n, &c->d);
        case 'b':
            if (*ps->p == 't') { c->b = 1; return match_literal(ps, "true", 4); }
            c->b = 0;
            return match_literal(ps, "false", 5);
        case 'l':
            if (*ps->p != '[') return REFUSE;
            return parse_int_list(ps, c);
        case 'D':
            if (*ps->p != '"') return REFUSE;
            return parse_decimal(ps, c);
    }
    return REFUSE;
}

/* memcmp(a, b, len) == 0 for a key of a few bytes, without a call into libc (a key is compared per field). */
static inline int same_bytes(const char *a, const char *b, size_t len) {
    for (size_t k = 0; k < len; k++) if (a[k] != b[k]) return 0;
    return 1;
}

/* The column for `key`, or NULL. Events of a channel list their keys in one order, and the columns are
   given in that order: the one after the last match is tried first. */
static Column *wanted(Parser *ps, const char *key, size_t len) {
    int guess = ps->next_guess < ps->ncolumns ? ps->next_guess : 0;
    for (int k = guess, tried = 0; tried < ps->ncolumns; tried++, k = k + 1 == ps->ncolumns ? 0 : k + 1) {
        Column *c = &ps->columns[k];
        if (c->key_len == len && same_bytes(c->key, key, len)) {
            ps->next_guess = k + 1;
            return c;
        }
    }
    return NULL;
}

/* The current row's values appended to each column (absent keys as nulls). */
static int end_row(Parser *ps) {
    int64_t row = ps->rows;
    for (int k = 0; k < ps->ncolumns; k++) {
        Column *c = &ps->columns[k];
        int valid = c->seen && !c->is_null;
        if (row % 8 == 0 && buf_zeros(&c->validity, 1)) return NO_MEMORY;
        if (valid) c->validity.data[row / 8] |= (char)(1 << (row % 8));
        else {
            c->null_count++;
            if (c->kind == 's' || c->kind == 'l') c->values.len = c->value_start;   /* drop a null's bytes */
        }
        switch (c->kind) {
            case 'i': if (buf_put(&c->values, valid ? &c->i : &(int64_t){0}, 8)) return NO_MEMORY; break;
            case 'd': if (buf_put(&c->values, valid ? &c->d : &(double){0}, 8)) return NO_MEMORY; break;
            case 'D': if (buf_put(&c->values, valid ? &c->decimal : &(__int128){0}, 16)) return NO_MEMORY; break;
            case 'b':
                if (row % 8 == 0 && buf_zeros(&c->values, 1)) return NO_MEMORY;
                if (valid && c->b) c->values.data[row / 8] |= (char)(1 << (row % 8));
                break;
            default: {   /* 's', 'l': the end offset of this row */
                size_t item = c->kind == 'l' ? 8 : 1;
                size_t stop = c->values.len / item;
                if (stop > INT32_MAX) return REFUSE;   /* past Arrow's 32-bit offsets: the reader decides */
                int32_t offset = (int32_t)stop;
                if (buf_put(&c->offsets, &offset, sizeof offset)) return NO_MEMORY;
                c->value_start = c->values.len;
            }
        }
        c->seen = 0;
    }
    ps->rows++;
    return OK;
}

static int parse_object(Parser *ps) {
    int status;
    ps->p++;   /* '{' */
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') { ps->p++; return end_row(ps); }
    for (;;) {
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') return REFUSE;
        const char *key = ps->p + 1, *close = key;
        size_t len;
        while (close < ps->end && *close != '"' && *close != '\\' && (unsigned char)*close >= 0x20) close++;
        if (close < ps->end && *close == '"') {   /* the usual key: short, no escapes */
            len = (size_t)(close - key);
            ps->p = close + 1;
        } else {
            ps->scratch.len = 0;
            if ((status = parse_string(ps, &ps->scratch))) return status;
            key = ps->scratch.data;
            len = ps->scratch.len;
        }
        Column *c = len <= MAX_KEY_BYTES ? wanted(ps, key, len) : NULL;
        if ((status = expect(ps, ':'))) return status;
        if ((status = c ? parse_wanted(ps, c) : skip_value(ps, 2))) return status;
        skip_ws(ps);
        if (ps->p >= ps->end) return REFUSE;
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == '}') { ps->p++; return end_row(ps); }
        return REFUSE;
    }
}

/* One frame: an array of objects, and nothing after it but whitespace. */
static int parse_frame(Parser *ps) {
    int64_t rows_before = ps->rows;
    int status;
    if ((status = expect(ps, '['))) return status;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') ps->p++;
    else {
        for (;;) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '{') return REFUSE;   /* an element that is not an event */
            if ((status = parse_object(ps))) return status;
            skip_ws(ps);
            if (ps->p >= ps->end) return REFUSE;
            if (*ps->p == ',') { ps->p++; continue; }
            if (*ps->p == ']') { ps->p++; break; }
            return REFUSE;
        }
    }
    skip_ws(ps);
    if (ps->p < ps->end) return REFUSE;
    int64_t count = ps->rows - rows_before;
    return buf_put(&ps->frame_counts, &count, sizeof count) ? NO_MEMORY : OK;
}

static int parse_all(Parser *ps, const char **starts, const Py_ssize_t *sizes, Py_ssize_t frames) {
    for (int k = 0; k < ps->ncolumns; k++) {
        Column *c = &ps->columns[k];
        if ((c->kind == 's' || c->kind == 'l') && buf_zeros(&c->offsets, sizeof(int32_t))) return NO_MEMORY;
    }
    for (Py_ssize_t f = 0; f < frames; f++) {
        ps->p = starts[f];
        ps->end = starts[f] + sizes[f];
        int status = parse_frame(ps);
        if (status) return status;
    }
    return OK;
}

static PyObject *bytes_of(Buf *b) {
    return PyBytes_FromStringAndSize(b->data ? b->data : "", (Py_ssize_t)b->len);
}

static PyObject *result_of(Parser *ps) {
    PyObject *columns = PyList_New(ps->ncolumns);
    if (!columns) return NULL;
    for (int k = 0; k < ps->ncolumns; k++) {
        Column *c = &ps->columns[k];
        PyObject *item = Py_BuildValue("(NLNN)", bytes_of(&c->validity), (long long)c->null_count,
                                       bytes_of(&c->values), bytes_of(&c->offsets));
        if (!item) { Py_DECREF(columns); return NULL; }
        PyList_SET_ITEM(columns, k, item);
    }
    return Py_BuildValue("(LNN)", (long long)ps->rows, bytes_of(&ps->frame_counts), columns);
}

static void release(Parser *ps) {
    for (int k = 0; k < ps->ncolumns; k++) {
        free(ps->columns[k].validity.data);
        free(ps->columns[k].values.data);
        free(ps->columns[k].offsets.data);
    }
    free(ps->frame_counts.data);
    free(ps->scratch.data);
}

/* The frames' UTF-8 forms (an ASCII str's is its own buffer: no copy), each frame held meanwhile. */
static int frame_texts(PyObject *frames, const char **starts, Py_ssize_t *sizes) {
    Py_ssize_t n = PyList_GET_SIZE(frames);
    for (Py_ssize_t f = 0; f < n; f++) {
        PyObject *frame = PyList_GET_ITEM(frames, f);
        if (!PyUnicode_Check(frame)) return REFUSE;
        starts[f] = PyUnicode_AsUTF8AndSize(frame, &sizes[f]);
        if (!starts[f]) {   /* e.g. a lone surrogate: no UTF-8 form */
            PyErr_Clear();
            return REFUSE;
        }
    }
    return OK;
}

/* parse(frames: list[str], keys: tuple[bytes], kinds: bytes) -> (rows, frame counts, columns) or None. */
static PyObject *parse(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *frames, *keys;
    const char *kinds;
    Py_ssize_t nkinds;
    if (!PyArg_ParseTuple(args, "O!O!y#", &PyList_Type, &frames, &PyTuple_Type, &keys, &kinds, &nkinds)) return NULL;
    Py_ssize_t nkeys = PyTuple_GET_SIZE(keys);
    if (nkeys != nkinds || nkeys > MAX_KEYS) {
        PyErr_SetString(PyExc_ValueError, "keys and kinds must pair up, at most 32 of them");
        return NULL;
    }
    Column columns[MAX_KEYS];
    memset(columns, 0, sizeof columns);
    Parser ps;
    memset(&ps, 0, sizeof ps);
    ps.columns = columns;
    ps.ncolumns = (int)nkeys;
    for (Py_ssize_t k = 0; k < nkeys; k++) {
        PyObject *key = PyTuple_GET_ITEM(keys, k);
        if (!PyBytes_Check(key) || kinds[k] == 0 || !strchr("sidblD", kinds[k])) {
            PyErr_SetString(PyExc_ValueError, "keys must be bytes and kinds one of s, i, d, b, l, D");
            return NULL;
        }
        columns[k].key = PyBytes_AS_STRING(key);   /* the tuple keeps them alive */
        columns[k].key_len = (size_t)PyBytes_GET_SIZE(key);
        columns[k].kind = kinds[k];
    }
    /* A copy of the list: the caller's may change while the GIL is released; the copy holds each frame. */
    PyObject *held = PyList_GetSlice(frames, 0, PyList_GET_SIZE(frames));
    Py_ssize_t n = held ? PyList_GET_SIZE(held) : 0;
    const char **starts = held ? PyMem_Calloc((size_t)n + 1, sizeof *starts) : NULL;
    Py_ssize_t *sizes = held ? PyMem_Calloc((size_t)n + 1, sizeof *sizes) : NULL;
    PyObject *result = NULL;
    if (!held || !starts || !sizes) {
        if (held) PyErr_NoMemory();
    } else if (frame_texts(held, starts, sizes) == REFUSE) {
        result = Py_NewRef(Py_None);
    } else {
        ps.released = PyEval_SaveThread();
        int status = parse_all(&ps, starts, sizes, n);
        PyEval_RestoreThread(ps.released);
        if (status == NO_MEMORY) result = PyErr_NoMemory();
        else if (status == REFUSE) result = Py_NewRef(Py_None);
        else result = result_of(&ps);
    }
    release(&ps);
    PyMem_Free(starts);
    PyMem_Free(sizes);
    Py_XDECREF(held);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, "parse(data, keys, kinds) -> (rows, frame_counts, columns) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_frame_columns", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__frame_columns(void) { return PyModule_Create(&module); }
