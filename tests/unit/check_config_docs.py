#!/usr/bin/env python3
"""Checks that docs/configuration.md and proxy.ini.example describe exactly
the options of the table in src/config.c.

The table is read as text: one OPT/OPT_LIST/LOPT row per line, and the enum
value lists as one {"name", VALUE, supported} entry per line. For each key
the documentation must give the same section, type, default, bounds, enum
values and "not supported yet" status; the example must set every key, with
its default unless the key is required. A key flagged IMF_CF_RESTART (a
SIGHUP cannot apply it) must say "Read at start only" in its meaning, and
only such a key.

With --man, the man page generated from configuration.md (imapfront.ini.5,
by docs/man.py) must list every key of the table under its section, and no
other: it cannot lag behind the page it is made from.

usage: check_config_docs.py SRCDIR [--man imapfront.ini.5]   (SRCDIR: src/, docs/, proxy.ini.example)
Exit status 0 when everything matches, 1 with a list of differences.
"""

import os
import re
import sys

ROW_RE = re.compile(r"^\s*(OPT|OPT_LIST|LOPT|COPT|POPT|POPT_LIST)\((.*)\),\s*$")
CHOICES_START_RE = re.compile(r"^static const struct imf_choice (\w+)\[\] = \{\s*$")
CHOICE_RE = re.compile(r'^\s*\{"([^"]*)",\s*[^,]+,\s*(true|false)\},\s*$')
HEADING_RE = re.compile(r"^##\s+\[([^\]]+)\]\s*$")

# C type (IMF_OT_x) -> the type word used in the documentation.
TYPE_WORDS = {
    "BOOL": "bool",
    "UINT": "uint",
    "SIZE": "size",
    "DURATION": "duration",
    "STRING": "string",
    "ENUM": "enum",
    "SOCKADDR": "address",
    "SOCKADDR_LIST": "address list",
}

# The unit macros of config.c, to evaluate bounds written as "16 * MiB".
C_CONSTANTS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "SEC": 1000}
C_CONSTANTS["MIN"] = 60 * C_CONSTANTS["SEC"]
C_CONSTANTS["HOUR"] = 60 * C_CONSTANTS["MIN"]
C_CONSTANTS["WEEK"] = 24 * 7 * C_CONSTANTS["HOUR"]

SIZE_UNITS = {"": 1, "k": 1024, "K": 1024, "M": 1024**2, "m": 1024**2, "G": 1024**3, "g": 1024**3}
DURATION_UNITS = {"": 1000, "ms": 1, "s": 1000, "m": 60000, "h": 3600000}


def split_args(text):
    """Splits a C macro argument list at top-level commas (quotes respected)."""
    args, cur, in_str, depth = [], "", False, 0
    for ch in text:
        if in_str:
            cur += ch
            if ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            cur += ch
        elif ch == "(":
            depth += 1
            cur += ch
        elif ch == ")":
            depth -= 1
            cur += ch
        elif ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    args.append(cur.strip())
    return args


def c_string(arg):
    if not (arg.startswith('"') and arg.endswith('"')):
        raise ValueError("not a string literal: " + arg)
    return arg[1:-1]


def c_number(expr):
    # Only integers, unit names, * and spaces: safe to evaluate.
    if not re.fullmatch(r"[0-9A-Za-z_ *]+", expr):
        raise ValueError("cannot evaluate bound: " + expr)
    for name in re.findall(r"[A-Za-z_]\w*", expr):
        if name not in C_CONSTANTS:
            raise ValueError("unknown constant in bound: " + name)
    return int(eval(expr, {"__builtins__": {}}, dict(C_CONSTANTS)))


def read_table(path):
    choices, rows = {}, []
    current = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            m = CHOICES_START_RE.match(line)
            if m:
                current = choices.setdefault(m.group(1), [])
                continue
            if current is not None:
                if line.strip() == "};":
                    current = None
                    continue
                m = CHOICE_RE.match(line)
                if m:
                    current.append((m.group(1), m.group(2) == "true"))
                continue
            m = ROW_RE.match(line)
            if not m:
                continue
            a = split_args(m.group(2))
            if len(a) != 9:
                raise ValueError("%s:%d: expected 9 row arguments, got %d" % (path, lineno, len(a)))
            flags = set(re.findall(r"IMF_CF_\w+", a[8]))
            rows.append({
                "section": c_string(a[0]),
                "key": c_string(a[1]),
                "type": a[2],
                "default": c_string(a[4]),
                "min": c_number(a[5]),
                "max": c_number(a[6]),
                "choices": a[7],
                "required": "IMF_CF_REQUIRED" in flags,
                "not_yet": "IMF_CF_NOT_YET" in flags,
                "auto": "IMF_CF_AUTO" in flags,
                "file": "IMF_CF_FILE" in flags,
                "restart": "IMF_CF_RESTART" in flags,
                "where": "%s:%d" % (os.path.basename(path), lineno),
            })
    # A row flagged IMF_CF_FILE has a second key, KEY_file: a string
    # naming the file the value is read from.
    for r in list(rows):
        if r["file"]:
            rows.append(dict(r, key=r["key"] + "_file", type="STRING", default="", min=0, max=0,
                             choices="NULL", required=False, not_yet=False, auto=False,
                             file=False, restart=False))
    for r in rows:
        if r["type"] == "ENUM":
            if r["choices"] not in choices:
                raise ValueError("%s: choice list %s not found" % (r["where"], r["choices"]))
            r["choices"] = choices[r["choices"]]
    return rows


def read_docs(path):
    entries = {}
    section = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            m = HEADING_RE.match(line)
            if m:
                section = m.group(1)
                continue
            if line.startswith("## "):
                section = None
                continue
            if section is None or not line.startswith("| `"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 5:
                raise ValueError("%s:%d: expected 5 columns" % (path, lineno))
            key = cells[0].strip("`")
            entries[(section, key)] = {
                "type": cells[1],
                "default": cells[2],
                "bounds": cells[3],
                "meaning": cells[4],
                "where": "%s:%d" % (os.path.basename(path), lineno),
            }
    return entries


def parse_unit_number(text, units):
    m = re.fullmatch(r"([0-9]+)([A-Za-z]*)", text)
    if not m or m.group(2) not in units:
        raise ValueError(text)
    return int(m.group(1)) * units[m.group(2)]


def check_bounds(row, doc, problems):
    t = row["type"]
    bounds = doc["bounds"]
    where = doc["where"]
    if t in ("UINT", "SIZE", "DURATION", "SOCKADDR_LIST"):
        m = re.fullmatch(r"(\S+)\.\.(\S+)( entries)?", bounds)
        if not m:
            problems.append("%s: %s: bounds %r, expected MIN..MAX" % (where, row["key"], bounds))
            return
        units = {"SIZE": SIZE_UNITS, "DURATION": DURATION_UNITS}.get(t, {"": 1})
        try:
            lo = parse_unit_number(m.group(1), units)
            hi = parse_unit_number(m.group(2), units)
        except ValueError as e:
            problems.append("%s: %s: cannot read bound %s" % (where, row["key"], e))
            return
        if (lo, hi) != (row["min"], row["max"]):
            problems.append("%s: %s: documented bounds %s but the table says %d..%d"
                            % (where, row["key"], bounds, row["min"], row["max"]))
    elif t == "ENUM":
        documented = []
        for part in bounds.split(","):
            m = re.fullmatch(r"\s*`([^`]+)`\s*(\(not supported yet\))?\s*", part)
            if not m:
                problems.append("%s: %s: cannot read enum value %r" % (where, row["key"], part))
                return
            documented.append((m.group(1), m.group(2) is None))
        if documented != row["choices"]:
            def show(lst):
                return ", ".join(n + ("" if ok else " (not supported yet)") for n, ok in lst)
            problems.append("%s: %s: documented values [%s] but the table has [%s]"
                            % (where, row["key"], show(documented), show(row["choices"])))
    elif bounds:
        problems.append("%s: %s: a %s has no bounds, found %r"
                        % (where, row["key"], TYPE_WORDS[t], bounds))


def doc_section(row):
    return row["section"]


def check_docs(rows, docs, problems):
    seen = set()
    for r in rows:
        k = (doc_section(r), r["key"])
        seen.add(k)
        d = docs.get(k)
        if d is None:
            problems.append("%s: [%s] %s is not documented in configuration.md"
                            % (r["where"], k[0], k[1]))
            continue
        word = TYPE_WORDS[r["type"]]
        want_type = word + " or `auto`" if r["auto"] else word
        if d["type"] != want_type:
            problems.append("%s: %s: documented type %r, expected %r"
                            % (d["where"], r["key"], d["type"], want_type))
        if r["required"]:
            want_default = "(none, required)"
        elif r["default"] == "":
            want_default = "(empty)"
        else:
            want_default = "`%s`" % r["default"]
        if d["default"] != want_default:
            problems.append("%s: %s: documented default %s but the table's is %s"
                            % (d["where"], r["key"], d["default"], want_default))
        check_bounds(r, d, problems)
        says_not_yet = "Not supported yet." in d["meaning"]
        if says_not_yet != r["not_yet"]:
            problems.append("%s: %s: the table %s IMF_CF_NOT_YET but the documentation %s"
                            " \"Not supported yet.\""
                            % (d["where"], r["key"], "has" if r["not_yet"] else "does not have",
                               "says" if says_not_yet else "does not say"))
        # IMF_CF_RESTART: what a SIGHUP cannot apply is said so, in words.
        says_restart = "Read at start only" in d["meaning"]
        if says_restart != r["restart"]:
            problems.append("%s: %s: the table %s IMF_CF_RESTART but the documentation %s"
                            " \"Read at start only\""
                            % (d["where"], r["key"], "has" if r["restart"] else "does not have",
                               "says" if says_restart else "does not say"))
    for k, d in docs.items():
        if k not in seen:
            problems.append("%s: [%s] %s is documented but not in the table of src/config.c"
                            % (d["where"], k[0], k[1]))


def read_example(path):
    """Returns {section: {key: (value, line)}} of the example's active lines,
    and of lines that show a key commented out as ";key = value" (keys whose
    mere presence changes behaviour, such as a shield that would override
    quirks = auto)."""
    sections = {}
    current = None
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = re.split(r"[ \t];", raw.rstrip("\n"), maxsplit=1)[0].strip()
            if re.match(r";[a-z_]+ *=", line):
                line = line[1:]
            elif not line or line[0] in ";#":
                continue
            m = re.fullmatch(r"\[([^\]]+)\]", line)
            if m:
                current = sections.setdefault(m.group(1), {})
                continue
            key, _, value = line.partition("=")
            if current is not None:
                current[key.strip()] = (value.strip(), lineno)
    return sections


def check_example(rows, example, problems):
    for r in rows:
        if r["section"].endswith(".NAME"):
            prefix = r["section"][:-len("NAME")]
            targets = [(s, kv) for s, kv in example.items() if s.startswith(prefix)]
            if not targets:
                problems.append("proxy.ini.example: has no [%s] section" % r["section"])
        else:
            targets = [(r["section"], example.get(r["section"], {}))]
        for sec, kv in targets:
            if r["key"] not in kv:
                problems.append("proxy.ini.example: [%s] does not set %s" % (sec, r["key"]))
                continue
            value, lineno = kv[r["key"]]
            if not r["required"] and value != r["default"]:
                problems.append("proxy.ini.example:%d: %s = %s, but the default is %r"
                                % (lineno, r["key"], value, r["default"]))


def read_man(path):
    """{(section, key): line} of the tagged paragraphs under the man page's
    '.SS "[section]"' subsections (docs/man.py's rendering of the tables)."""
    keys = {}
    section = None
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r'\.SS "\[([^\]]+)\]"', line)
        if m:
            section = m.group(1).replace("\\-", "-")
        elif line.startswith(".SH"):
            section = None
        elif line == ".TP" and section is not None and i + 1 < len(lines):
            m = re.fullmatch(r"\\fB(.+?)\\fR", lines[i + 1])
            if m:
                keys[(section, m.group(1).replace("\\-", "-"))] = i + 2
    return keys


def check_man(rows, path, problems):
    name = os.path.basename(path)
    keys = read_man(path)
    table = {(r["section"], r["key"]) for r in rows}
    for sec, key in sorted(table - set(keys)):
        problems.append("%s: [%s] %s is missing from the man page" % (name, sec, key))
    for sec, key in sorted(set(keys) - table):
        problems.append("%s:%d: [%s] %s is in the man page but not in the table of src/config.c"
                        % (name, keys[(sec, key)], sec, key))


def main(argv):
    man = None
    if len(argv) == 4 and argv[2] == "--man":
        man = argv[3]
        argv = argv[:2]
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    src = argv[1]
    rows = read_table(os.path.join(src, "src", "config.c"))
    docs = read_docs(os.path.join(src, "docs", "configuration.md"))
    example = read_example(os.path.join(src, "proxy.ini.example"))
    problems = []
    if not rows:
        problems.append("config.c: no option rows found (is the table still one row per line?)")
    check_docs(rows, docs, problems)
    check_example(rows, example, problems)
    if man is not None:
        check_man(rows, man, problems)
    for p in problems:
        print(p)
    if problems:
        print("FAIL: %d difference(s) between src/config.c, docs/configuration.md "
              "and proxy.ini.example" % len(problems))
        return 1
    print("ok: %d keys agree between src/config.c, docs/configuration.md and proxy.ini.example%s"
          % (len(rows), " and " + os.path.basename(man) if man else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
