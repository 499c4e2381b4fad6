/* A conservative validator of raw event lines, for the parser's fast path.
 *
 * `LineChecker.check(lines)` says, per line, True when the line is certainly a valid event of
 * the schema it was built with (every rule but occurred_at's, no unknown field), and None when
 * it cannot tell: the Python checks then decide that line (parse.fast_check, then parse_event).
 * So this code only has to be sound, never complete: anything unusual (escapes, non-ASCII,
 * exponents, duplicate keys, long numbers, other whitespace) is left to Python. It reads only
 * inside the bytes it is given and allocates nothing per line.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_FIELDS 48
#define MAX_TYPES 16
#define MAX_NAME 48

enum {
    LEVEL_TOP,
    LEVEL_ENVELOPE,
    LEVEL_PAYLOAD,
    LEVEL_ASSERTION,
    LEVELS
};

typedef struct {
    char name[MAX_NAME];
    Py_ssize_t len;
    char kind;     /* see KINDS below */
    int required;  /* must be present */
    int nullable;  /* may be JSON null */
} Field;

/* s string, S non-empty string, T one of the types, i int32, I int64, d double, b bool,
 * E the envelope object, P the payload object, A an array of assertion objects. */
static const char KINDS[] = "sSTiIdbEPA";

typedef struct {
    Field fields[MAX_FIELDS];
    int count;
    uint64_t required; /* bit i: fields[i] is required */
} Level;

typedef struct {
    PyObject_HEAD
    Level levels[LEVELS];
    char types[MAX_TYPES][MAX_NAME];
    Py_ssize_t type_len[MAX_TYPES];
    uint64_t own[MAX_TYPES]; /* per type: the payload fields it may have */
    int type_count;
    Py_ssize_t max_line;
} Checker;

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
    int type; /* index of the envelope's type, -1 until read */
    uint64_t payload_seen;
} Cursor;

static inline void skip_space(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

/* PLAIN[ch]: ch may stand in a string as itself (printable ASCII but the quote and backslash). */
static unsigned char PLAIN[256];

static void init_plain(void) {
    for (int ch = 0x20; ch < 0x80; ch++)
        PLAIN[ch] = ch != '"' && ch != '\\';
}

/* Whether any of the 8 bytes of w is not PLAIN. Each test is exact about "any" (the bit hacks
 * haszero and hasless), so a word without such a byte is never flagged; a flagged word is
 * looked at byte by byte. */
static inline int has_special(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
    uint64_t control = (w - ones * 0x20) & ~w;
    uint64_t is_quote = (quote - ones) & ~quote, is_backslash = (backslash - ones) & ~backslash;
    return ((w | control | is_quote | is_backslash) & highs) != 0;
}

/* A string of printable ASCII without escapes; its content in [*start, *start + *len). */
static int read_string(Cursor *c, const unsigned char **start, Py_ssize_t *len) {
    if (c->p >= c->end || *c->p != '"')
        return 0;
    const unsigned char *q = c->p + 1;
    uint64_t word;
    while (c->end - q >= 8) {
        memcpy(&word, q, 8);
        if (has_special(word))
            break;
        q += 8;
    }
    while (q < c->end && PLAIN[*q])
        q++;
    if (q >= c->end || *q != '"')
        return 0;
    *start = c->p + 1;
    *len = q - (c->p + 1);
    c->p = q + 1;
    return 1;
}

static int read_literal(Cursor *c, const char *word, Py_ssize_t len) {
    if (c->end - c->p < len || memcmp(c->p, word, len) != 0)
        return 0;
    c->p += len;
    return 1;
}

/* A JSON number without exponent: 1 for an integer (its value in *value), 2 for a fraction,
 * 0 for anything else. *digits counts the digits on both sides of the point. */
static int read_number(Cursor *c, int64_t *value, int *digits) {
    const unsigned char *q = c->p;
    int negative = 0;
    int64_t v = 0;
    if (q < c->end && *q == '-') {
        negative = 1;
        q++;
    }
    const unsigned char *first = q;
    if (q < c->end && *q == '0') {
        q++;
    } else {
        while (q < c->end && *q >= '0' && *q <= '9' && q - first < 18) {
            v = v * 10 + (*q - '0');
            q++;
        }
    }
    Py_ssize_t whole = q - first;
    if (whole == 0 || (q < c->end && *q >= '0' && *q <= '9'))
        return 0;
    int result = 1;
    Py_ssize_t fraction = 0;
    if (q < c->end && *q == '.') {
        const unsigned char *point = ++q;
        while (q < c->end && *q >= '0' && *q <= '9' && q - point < 18)
            q++;
        fraction = q - point;
        if (fraction == 0 || (q < c->end && *q >= '0' && *q <= '9'))
            return 0;
        result = 2;
    }
    if (q < c->end && (*q == 'e' || *q == 'E'))
        return 0;
    *value = negative ? -v : v;
    *digits = (int)(whole + fraction);
    c->p = q;
    return result;
}

static int read_object(Checker *ck, Cursor *c, int level, uint64_t *seen);

static int read_assertions(Checker *ck, Cursor *c) {
    if (c->p >= c->end || *c->p != '[')
        return 0;
    c->p++;
    skip_space(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return 1;
    }
    for (;;) {
        uint64_t seen = 0;
        if (!read_object(ck, c, LEVEL_ASSERTION, &seen))
            return 0;
        skip_space(c);
        if (c->p >= c->end)
            return 0;
        if (*c->p == ']') {
            c->p++;
            return 1;
        }
        if (*c->p != ',')
            return 0;
        c->p++;
        skip_space(c);
    }
}

static int read_value(Checker *ck, Cursor *c, const Field *f) {
    if (c->p >= c->end)
        return 0;
    if (*c->p == 'n')
        return f->nullable && read_literal(c, "null", 4);
    const unsigned char *s;
    Py_ssize_t n;
    int64_t v;
    int digits;
    uint64_t seen = 0;
    switch (f->kind) {
    case 's':
        return read_string(c, &s, &n);
    case 'S':
        return read_string(c, &s, &n) && n > 0;
    case 'T':
        if (!read_string(c, &s, &n))
            return 0;
        for (int i = 0; i < ck->type_count; i++) {
            if (ck->type_len[i] == n && memcmp(ck->types[i], s, n) == 0) {
                c->type = i;
                return 1;
            }
        }
        return 0;
    case 'i':
        return read_number(c, &v, &digits) == 1 && v >= INT32_MIN && v <= INT32_MAX;
    case 'I':
        return read_number(c, &v, &digits) == 1;
    case 'd': /* at most 15 digits: every reader rounds them to the same double */
        return read_number(c, &v, &digits) != 0 && digits <= 15;
    case 'b':
        return *c->p == 't' ? read_literal(c, "true", 4) : read_literal(c, "false", 5);
    case 'E':
        return read_object(ck, c, LEVEL_ENVELOPE, &seen);
    case 'P':
        if (!read_object(ck, c, LEVEL_PAYLOAD, &seen))
            return 0;
        c->payload_seen = seen;
        return 1;
    case 'A':
        return read_assertions(ck, c);
    }
    return 0;
}

static inline int same_name(const Field *f, const unsigned char *key, Py_ssize_t len) {
    return f->len == len && memcmp(f->name, key, len) == 0;
}

/* An object whose keys are fields of `level`, each once, each with a value of its kind. */
static int read_object(Checker *ck, Cursor *c, int level, uint64_t *seen) {
    const Level *lv = &ck->levels[level];
    int expected = 0;
    if (c->p >= c->end || *c->p != '{')
        return 0;
    c->p++;
    skip_space(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return (lv->required & ~*seen) == 0;
    }
    for (;;) {
        const unsigned char *key;
        Py_ssize_t len;
        if (!read_string(c, &key, &len))
            return 0;
        /* Lines mostly keep the schema's order: the field after the last one comes first. */
        int i = expected < lv->count && same_name(&lv->fields[expected], key, len) ? expected : 0;
        while (i < lv->count && !same_name(&lv->fields[i], key, len))
            i++;
        expected = i + 1;
        if (i == lv->count || (*seen & ((uint64_t)1 << i)))
            return 0; /* unknown or repeated */
        *seen |= (uint64_t)1 << i;
        skip_space(c);
        if (c->p >= c->end || *c->p != ':')
            return 0;
        c->p++;
        skip_space(c);
        if (!read_value(ck, c, &lv->fields[i]))
            return 0;
        skip_space(c);
        if (c->p >= c->end)
            return 0;
        if (*c->p == '}') {
            c->p++;
            return (lv->required & ~*seen) == 0;
        }
        if (*c->p != ',')
            return 0;
        c->p++;
        skip_space(c);
    }
}

static int check_line(Checker *ck, const char *data, Py_ssize_t size) {
    if (size > ck->max_line)
        return 0;
    Cursor c = {(const unsigned char *)data, (const unsigned char *)data + size, -1, 0};
    uint64_t seen = 0;
    skip_space(&c);
    if (!read_object(ck, &c, LEVEL_TOP, &seen))
        return 0;
    skip_space(&c);
    if (c.p != c.end || c.type < 0)
        return 0;
    return (c.payload_seen & ~ck->own[c.type]) == 0;
}

/* -- Python ------------------------------------------------------------------------------- */

static int copy_name(const char *what, PyObject *name, char *out, Py_ssize_t *len) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(name, &n);
    if (s == NULL)
        return 0;
    if (n == 0 || n >= MAX_NAME) {
        PyErr_Format(PyExc_ValueError, "%s name %R: empty or longer than %d bytes", what, name,
                     MAX_NAME - 1);
        return 0;
    }
    memcpy(out, s, n + 1);
    *len = n;
    return 1;
}

/* The kinds a level may hold: objects and arrays only where the structure has them, so the
 * checker's recursion is as deep as the schema, whatever the input. */
static const char *LEVEL_KINDS[LEVELS] = {"EP", "sSTiIdb", "sSTiIdbA", "sSTiIdb"};

/* fields: a sequence of (name, kind, required, nullable) */
static int load_level(Level *lv, int level, PyObject *fields) {
    PyObject *seq = PySequence_Fast(fields, "fields must be a sequence");
    if (seq == NULL)
        return 0;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "at most %d fields per level", MAX_FIELDS);
        Py_DECREF(seq);
        return 0;
    }
    lv->count = 0;
    lv->required = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Field *f = &lv->fields[i];
        PyObject *name;
        int kind, required, nullable;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "UCpp;field: (name, kind, required, nullable)",
                              &name, &kind, &required, &nullable) ||
            !copy_name("field", name, f->name, &f->len)) {
            Py_DECREF(seq);
            return 0;
        }
        if (kind == 0 || strchr(KINDS, kind) == NULL) {
            PyErr_Format(PyExc_ValueError, "field %R: unknown kind %c", name, kind);
            Py_DECREF(seq);
            return 0;
        }
        if (strchr(LEVEL_KINDS[level], kind) == NULL) {
            PyErr_Format(PyExc_ValueError, "field %R: kind %c does not belong at this level (%s)",
                         name, kind, LEVEL_KINDS[level]);
            Py_DECREF(seq);
            return 0;
        }
        f->kind = (char)kind;
        f->required = required;
        f->nullable = nullable;
        if (required)
            lv->required |= (uint64_t)1 << i;
        lv->count++;
    }
    Py_DECREF(seq);
    return 1;
}

static PyObject *Checker_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"top", "envelope", "payload", "assertion", "types", "max_line", NULL};
    PyObject *levels[LEVELS], *types;
    Py_ssize_t max_line;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOn", keywords, &levels[0], &levels[1],
                                     &levels[2], &levels[3], &types, &max_line))
        return NULL;
    Checker *ck = (Checker *)type->tp_alloc(type, 0);
    if (ck == NULL)
        return NULL;
    ck->max_line = max_line;
    for (int i = 0; i < LEVELS; i++) {
        if (!load_level(&ck->levels[i], i, levels[i])) {
            Py_DECREF(ck);
            return NULL;
        }
    }
    /* types: a sequence of (name, payload field names it owns) */
    PyObject *seq = PySequence_Fast(types, "types must be a sequence");
    if (seq == NULL) {
        Py_DECREF(ck);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > MAX_TYPES) {
        PyErr_Format(PyExc_ValueError, "at most %d types", MAX_TYPES);
        goto fail;
    }
    const Level *payload = &ck->levels[LEVEL_PAYLOAD];
    for (Py_ssize_t t = 0; t < count; t++) {
        PyObject *name, *owned;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, t), "UO;type: (name, owned fields)", &name,
                              &owned) ||
            !copy_name("type", name, ck->types[t], &ck->type_len[t]))
            goto fail;
        PyObject *it = PyObject_GetIter(owned);
        if (it == NULL)
            goto fail;
        PyObject *field;
        while ((field = PyIter_Next(it)) != NULL) {
            Py_ssize_t n;
            const char *s = NULL;
            if (!PyUnicode_Check(field))
                PyErr_Format(PyExc_TypeError, "type %R owns %R, not a str", name, field);
            else
                s = PyUnicode_AsUTF8AndSize(field, &n);
            int i = 0;
            while (s != NULL && i < payload->count &&
                   !(payload->fields[i].len == n && memcmp(payload->fields[i].name, s, n) == 0))
                i++;
            if (s != NULL && i == payload->count)
                PyErr_Format(PyExc_ValueError, "type %R owns %R, not a payload field", name, field);
            Py_DECREF(field);
            if (PyErr_Occurred()) {
                Py_DECREF(it);
                goto fail;
            }
            ck->own[t] |= (uint64_t)1 << i;
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            goto fail;
        ck->type_count++;
    }
    Py_DECREF(seq);
    return (PyObject *)ck;
fail:
    Py_DECREF(seq);
    Py_DECREF(ck);
    return NULL;
}

static PyObject *Checker_check(Checker *ck, PyObject *lines) {
    if (!PyList_Check(lines)) {
        PyErr_SetString(PyExc_TypeError, "check() takes a list of bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(lines);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyBytes_Check(line)) {
            Py_DECREF(out);
            PyErr_Format(PyExc_TypeError, "line %zd is %.100s, not bytes", i, Py_TYPE(line)->tp_name);
            return NULL;
        }
        PyObject *verdict = check_line(ck, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line)) ? Py_True : Py_None;
        Py_INCREF(verdict);
        PyList_SET_ITEM(out, i, verdict);
    }
    return out;
}

static PyMethodDef Checker_methods[] = {
    {"check", (PyCFunction)Checker_check, METH_O,
     "check(lines) -> list: True where a line is certainly a valid event without unknown "
     "fields, None where Python must decide."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CheckerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sluice.process._linecheck.LineChecker",
    .tp_basicsize = sizeof(Checker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A conservative validator of event lines (see the module's source).",
    .tp_new = Checker_new,
    .tp_methods = Checker_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "sluice.process._linecheck", .m_size = -1,
};

PyMODINIT_FUNC PyInit__linecheck(void) {
    init_plain();
    if (PyType_Ready(&CheckerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CheckerType);
    if (PyModule_AddObject(m, "LineChecker", (PyObject *)&CheckerType) < 0) {
        Py_DECREF(&CheckerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
