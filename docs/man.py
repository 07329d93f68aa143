#!/usr/bin/env python3
"""Turns one of the project's Markdown pages into a man page, so that the
man pages are generated from the pages they describe and cannot disagree
with them: docs/configuration.md becomes imapfront.ini(5),
docs/imapfront.8.md becomes imapfront(8).

usage: man.py SOURCE.md OUTPUT NAME SECTION SUMMARY VERSION

It knows the Markdown the docs use and nothing more: "#" (the page title,
dropped: NAME replaces it), "##" and "###" headings, paragraphs, "* " lists,
fenced code blocks, tables, <!-- comments --> (dropped), `code`, **bold**, *emphasis* and [links](...).
A "## [section]" heading (an INI section of configuration.md) becomes a
subsection of OPTIONS; a table becomes one tagged paragraph per row: the
first cell as the tag, the middle cells as "Header: value", the last cell
as the text. Anything else it cannot place is an error, not a guess.
"""

import re
import sys


def inline(text):
    """Markdown inline text -> roff inline text (no line breaks)."""
    out = []
    pos = 0
    # `code`, **bold**, *emphasis*, [text](target)
    token = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"
                       r"|\[([^\]]+)\]\(([^)]+)\)")
    for m in token.finditer(text):
        out.append(escape(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append("\\fB" + escape(m.group(1)) + "\\fR")
        elif m.group(2) is not None:
            out.append("\\fB" + inline(m.group(2)) + "\\fR")
        elif m.group(3) is not None:
            out.append("\\fI" + inline(m.group(3)) + "\\fR")
        else:
            out.append(inline(m.group(4)))
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def escape(text):
    return text.replace("\\", "\\e").replace("-", "\\-")


def line_out(text):
    """A text line: one starting with a control character is protected."""
    text = text.strip()
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def table_cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


class Converter:
    def __init__(self, src_name):
        self.src = src_name
        self.out = []
        self.in_options = False

    def error(self, lineno, what):
        raise SystemExit("%s:%d: %s" % (self.src, lineno, what))

    def heading(self, level, title, lineno):
        m = re.fullmatch(r"\[([^\]]+)\]", title)
        if level == 2 and m:
            if not self.in_options:
                self.out.append(".SH OPTIONS")
                self.in_options = True
            self.out.append('.SS "[%s]"' % escape(m.group(1)))
        elif level == 2:
            self.in_options = False
            self.out.append('.SH "%s"' % escape(title.upper()))
        elif level == 3:
            self.out.append('.SS "%s"' % escape(title))
        else:
            self.error(lineno, "heading level %d is not used in man pages" % level)

    def table(self, rows, lineno):
        if len(rows) < 2 or not re.fullmatch(r"[-|: ]+", rows[1]):
            self.error(lineno, "a table needs a header row and a |---| row")
        header = table_cells(rows[0])
        for row in rows[2:]:
            cells = table_cells(row)
            if len(cells) != len(header):
                self.error(lineno, "a row has %d cells, the header %d" % (len(cells), len(header)))
            self.out.append(".TP")
            self.out.append(line_out(inline(cells[0])))
            middle = ["%s: %s" % (h, inline(c)) for h, c in zip(header[1:-1], cells[1:-1]) if c]
            if middle:
                self.out.append(line_out("; ".join(middle) + "."))
                self.out.append(".br")
            self.out.append(line_out(inline(cells[-1])))

    def convert(self, lines):
        i = 0
        n = len(lines)
        while i < n:
            line = lines[i].rstrip("\n")
            lineno = i + 1
            if not line.strip():
                i += 1
                continue
            if line.startswith("<!--"):
                while i < n and "-->" not in lines[i]:
                    i += 1
                if i == n:
                    self.error(lineno, "comment not closed")
                i += 1
                continue
            m = re.match(r"^(#+)\s+(.*)$", line)
            if m:
                if len(m.group(1)) > 1:
                    self.heading(len(m.group(1)), m.group(2).strip(), lineno)
                i += 1
                continue
            if line.startswith("```"):
                i += 1
                self.out += [".PP", ".RS 4", ".nf"]
                while i < n and not lines[i].startswith("```"):
                    self.out.append("\\&" + escape(lines[i].rstrip("\n")))
                    i += 1
                if i == n:
                    self.error(lineno, "code block not closed")
                self.out += [".fi", ".RE"]
                i += 1
                continue
            if line.startswith("|"):
                rows = []
                while i < n and lines[i].startswith("|"):
                    rows.append(lines[i].rstrip("\n"))
                    i += 1
                self.table(rows, lineno)
                continue
            if line.startswith("* "):
                while i < n and lines[i].startswith("* "):
                    item = [lines[i][2:].strip()]
                    i += 1
                    while i < n and lines[i].startswith("  ") and lines[i].strip():
                        item.append(lines[i].strip())
                        i += 1
                    self.out += [".IP \\(bu 2", line_out(inline(" ".join(item)))]
                continue
            para = []
            while i < n and lines[i].strip() and not re.match(r"^(#|```|\||\* )", lines[i]):
                para.append(lines[i].strip())
                i += 1
            self.out += [".PP", line_out(inline(" ".join(para)))]
        return self.out


def main(argv):
    if len(argv) != 7:
        print(__doc__.strip().splitlines()[5], file=sys.stderr)
        return 2
    src, output, name, section, summary, version = argv[1:]
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()
    body = Converter(src).convert(lines)
    if body and not body[0].startswith(".SH"):
        body.insert(0, ".SH DESCRIPTION")
    if '.SH "SEE ALSO"' not in body:
        pages = [p for p in ("imapfront(8)", "imapfront.ini(5)") if p != "%s(%s)" % (name, section)]
        body += ['.SH "SEE ALSO"', ", ".join("\\fB%s\\fR(%s)" % tuple(p[:-1].split("("))
                                              for p in pages)]
    head = [
        '.\\" Generated from %s by docs/man.py: edit that file, not this one.'
        % src.replace("\\", "/").split("/")[-1],
        '.TH "%s" "%s" "" "imapfront %s" "imapfront"' % (name.upper(), section, version),
        ".SH NAME",
        "%s \\- %s" % (escape(name), escape(summary)),
    ]
    with open(output, "w", encoding="utf-8") as f:
        f.write("\n".join(head + body) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
