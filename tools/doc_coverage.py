#!/usr/bin/env python3
"""Lists the library's public functions that have no `///` comment at their declaration.

A helper for maintainers (CI does not run it): the goal is that every public function says what
it requires, guarantees and throws where it is declared.

    python3 tools/doc_coverage.py [-q] [header or folder ...]   (default: every floor below)

What it counts, in include/eigenformer/{core,ops,layers,model,train,decode,io,text,dist}: function
declarations (free functions, and the public members of classes, constructors included) outside
namespace detail, plus the public members of a detail class that a public class derives from
(detail::SingleStackModel). A declaration is documented when a `///` line is directly above it
(above its `template <...>` line), or when it follows a documented declaration with no line in
between: one comment over a group of overloads, or a pair like keys() / values().

What it leaves out: defaulted and deleted members, destructors, overrides (documented at the
virtual function they override), out-of-class definitions of members (the documentation belongs
at the declaration in the class), protected and private members, macros.

What it cannot see: it reads the text, not the C++, so it does not know whether a comment says
anything useful, whether it covers every function of a group, or whether it is still true; a
function produced by a macro is invisible to it; and an unusual construct (a brace in a default
member initialiser, say) may confuse its brace counting. Output: each undocumented function as
path:line: name, then documented/total per header and in all.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "include", "eigenformer")
FLOORS = ["core", "ops", "layers", "model", "train", "decode", "io", "text", "dist"]
NOT_NAMES = {"if", "for", "while", "switch", "return", "sizeof", "decltype", "alignof",
             "static_assert", "noexcept", "catch", "throw"}


def blank_comments_and_literals(text):
    """text with comments, string and character literals and preprocessor lines replaced by
    spaces, newlines kept, so that line numbers and brace counts stay right."""
    out = list(text)
    i, n = 0, len(text)

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c == "#":  # a preprocessor line, with its continuations
            j = i
            while j < n and (text[j] != "\n" or text[j - 1] == "\\"):
                j += 1
            blank(i, j)
            i = j
            continue
        if c == "\n":
            at_line_start = True
            i += 1
            continue
        if not c.isspace():
            at_line_start = False
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif text.startswith('R"', i) and not (text[i - 1].isalnum() or text[i - 1] == "_"):
            open_paren = text.find("(", i)
            delim = text[i + 2:open_paren]
            j = text.find(")" + delim + '"', open_paren)
            j = n if j < 0 else j + len(delim) + 2
            blank(i, j)
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
        else:
            i += 1
    return "".join(out)


def strip_template_prefix(s):
    """s without a leading `template <...>` (nested angle brackets counted)."""
    s = s.lstrip()
    while s.startswith("template"):
        rest = s[len("template"):].lstrip()
        if not rest.startswith("<"):
            break
        depth = 0
        for k, ch in enumerate(rest):
            depth += ch == "<"
            depth -= ch == ">"
            if depth == 0:
                s = rest[k + 1:].lstrip()
                break
        else:
            break
    return s


def function_name(stmt, class_name):
    """The name of the function that stmt declares or defines, or None if it declares none that
    counts (a variable, a using, a qualified definition, a destructor, an override, ...)."""
    s = strip_template_prefix(stmt)
    if not s or re.match(r"(using|typedef|friend|static_assert|return|enum)\b", s):
        return None
    macro = re.match(r"([A-Z][A-Z0-9_]*)\s*\(", s)  # e.g. EIGENFORMER_CLASS_TEMPLATES(X)
    if macro and macro.group(1) != class_name:
        return None
    op = re.search(r"\boperator\b", s)
    paren = s.find("(")
    if paren < 0:
        return None
    if op and op.start() < paren:
        name = "operator" + re.sub(r"\s+", " ", s[op.end():paren]).rstrip()
        head = s[:op.start()]
    else:
        m = re.search(r"(~?\w+)\s*$", s[:paren])
        if not m or m.group(1) in NOT_NAMES:
            return None
        name, head = m.group(1), s[:m.start()]
        if name.startswith("~"):
            return None
    if head.rstrip().endswith("::"):  # X<S>::f: an out-of-class definition
        return None
    if re.search(r"(?<![=!<>])=(?!=)", head):  # `T x = f(...)`: a variable
        return None
    if not head.strip() and name != class_name:  # a call, not a declaration
        return None
    tail = s[paren:]
    if re.search(r"=\s*(default|delete)\s*$", tail) or re.search(r"\b(override|final)\b", tail):
        return None
    return name


def scan(path, public_detail_classes):
    """[(line, name, documented)] for the counted declarations of one header."""
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    lines = raw.split("\n")
    code = blank_comments_and_literals(raw)
    # A scope: (kind, name, counted, access); kind namespace | class | block.
    stack = [("namespace", "", True, "public")]
    found = []  # [first line, last line, name]
    body_of = None  # the entry of found whose body is being skipped
    pending_start, parens = 0, 0

    def scope_counts():
        kind, _, counted, access = stack[-1]
        return kind != "block" and counted and access == "public"

    def record(end):
        """Appends the function that code[pending_start:end] declares, if any; True if one."""
        stmt = code[pending_start:end]
        if not stmt.strip() or not scope_counts():
            return False
        name = function_name(stmt, stack[-1][1])
        if not name:
            return False
        first = code.count("\n", 0, pending_start + len(stmt) - len(stmt.lstrip())) + 1
        found.append([first, code.count("\n", 0, end) + 1, name])
        return True

    i = 0
    while i < len(code):
        c = code[i]
        if stack[-1][0] == "block":
            if c == "{":
                stack.append(("block", "", False, ""))
            elif c == "}":
                stack.pop()
                if stack[-1][0] != "block":  # the end of a body: the function's last line
                    if body_of is not None:
                        body_of[1] = code.count("\n", 0, i) + 1
                    body_of = None
                    pending_start, parens = i + 1, 0
            i += 1
            continue
        if c == "(":
            parens += 1
        elif c == ")":
            parens -= 1
        elif parens > 0:
            pass  # a brace or semicolon inside a parameter list (`= {}`)
        elif c == ":" and stack[-1][0] == "class" and ":" not in (code[i - 1], code[i + 1]):
            word = code[pending_start:i].strip()
            if word in ("public", "private", "protected"):
                kind, name, counted, _ = stack[-1]
                stack[-1] = (kind, name, counted, word)
                pending_start = i + 1
        elif c == ";":
            record(i)
            pending_start = i + 1
        elif c == "{":
            stmt = strip_template_prefix(code[pending_start:i])
            ns = re.match(r"namespace\s*(\w*)", stmt)
            cls = re.match(r"(class|struct|union)\s+(\w+)", stmt)
            if ns:
                counted = scope_counts() and ns.group(1) != "detail"
                stack.append(("namespace", ns.group(1), counted, "public"))
            elif cls and "(" not in stmt:
                name = cls.group(2)
                counted = scope_counts() or name in public_detail_classes
                access = "private" if cls.group(1) == "class" else "public"
                stack.append(("class", name, counted, access))
            else:
                body_of = found[-1] if "(" in stmt and record(i) else None
                stack.append(("block", "", False, ""))
            pending_start, parens = i + 1, 0
        elif c == "}":
            stack.pop()
            pending_start, parens = i + 1, 0
        i += 1

    result = []
    prev_last, prev_documented = None, False
    for first, last, name in found:
        above = lines[first - 2].strip() if first >= 2 else ""
        documented = above.startswith("///") or (prev_last == first - 1 and prev_documented)
        result.append((first, name, documented))
        prev_last, prev_documented = last, documented
    return result


def headers(args):
    paths = args or [os.path.join(ROOT, floor) for floor in FLOORS]
    for p in paths:
        if os.path.isdir(p):
            for dirpath, _, files in sorted(os.walk(p)):
                for f in sorted(files):
                    if f.endswith(".hpp"):
                        yield os.path.join(dirpath, f)
        else:
            yield p


def main(argv):
    quiet = "-q" in argv
    files = list(headers([a for a in argv if a != "-q"]))
    texts = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    public_detail_classes = set(re.findall(r"public\s+detail::(\w+)", "\n".join(texts)))
    total = documented = 0
    rows = []
    for path in files:
        found = scan(path, public_detail_classes)
        rel = os.path.relpath(path, ROOT)
        for line, name, ok in found:
            if not ok and not quiet:
                print(f"{rel}:{line}: {name}")
        n_ok = sum(ok for _, _, ok in found)
        rows.append((rel, n_ok, len(found)))
        total += len(found)
        documented += n_ok
    if not quiet:
        print()
    width = max(len(r[0]) for r in rows) if rows else 0
    for rel, n_ok, n in rows:
        print(f"{rel:<{width}}  {n_ok:4d} / {n:4d}")
    print(f"{'all':<{width}}  {documented:4d} / {total:4d}")


if __name__ == "__main__":
    main(sys.argv[1:])
