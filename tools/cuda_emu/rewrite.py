"""Copies a CUDA source file as host C++ for the emulation build (tools/cuda_emu/include/dlk_emu/emu.h).

Two mechanical rewrites, line numbers kept (a #line directive names the original file):
  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> kernel % ::dlk_emu::Launch("kernel", __FILE__, __LINE__, grid, block[, smem[, stream]])(args)
  __shared__ T a[N], b;          -> auto& a = ::dlk_emu::shared_var<T[N]>([] {}); auto& b = ...;
  extern __shared__ T buf[];     -> T* buf = ::dlk_emu::dynamic_shared_as<T>();
Usage: rewrite.py SRC.cu OUT.cpp [DISPLAY_NAME]
"""
import re
import sys

LAUNCH = re.compile(
    r"(?P<kernel>[A-Za-z_][\w:]*(?:<[^<>;{}]*(?:<[^<>;{}]*>[^<>;{}]*)*>)?)(?P<gap>\s*)<<<(?P<cfg>.*?)>>>", re.S)
DECL = r"[A-Za-z_]\w*(?:\s*\[[^\]]+\])*"
SHARED = re.compile(r"^(?P<indent>[ \t]*)__shared__\s+(?:__align__\(\d+\)\s+)?(?P<type>.+?)\s+(?P<decls>"
                    + DECL + r"(?:\s*,\s*" + DECL + r")*)\s*;", re.M)
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(?P<type>[^;]+?)\s*(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;")


def launch(m):
    kernel = m.group("kernel")
    return '%s %% ::dlk_emu::Launch("%s", __FILE__, __LINE__, %s)%s' % (
        kernel, kernel, m.group("cfg"), "\n" * m.group("gap").count("\n"))


def shared(m):
    out = []
    for d in re.split(r"\s*,\s*", m.group("decls")):
        name = re.match(r"[A-Za-z_]\w*", d).group(0)
        dims = d[len(name):].replace(" ", "")
        out.append("auto& %s = ::dlk_emu::shared_var<%s%s>([] {});" % (name, m.group("type"), dims))
    return m.group("indent") + " ".join(out)


def rewrite(text):
    text = EXTERN_SHARED.sub(lambda m: "%s* %s = ::dlk_emu::dynamic_shared_as<%s>();" % (
        m.group("type"), m.group("name"), m.group("type")), text)
    text = SHARED.sub(shared, text)
    return LAUNCH.sub(launch, text)


def main():
    src, out = sys.argv[1], sys.argv[2]
    name = sys.argv[3] if len(sys.argv) > 3 else src
    with open(src) as f:
        text = f.read()
    new = rewrite(text)
    assert new.count("\n") == text.count("\n"), "rewrite changed the line count of " + src
    if "<<<" in new or "__shared__" in new.replace("dlk_emu", ""):
        sys.exit("rewrite.py: a launch or __shared__ declaration in %s was not rewritten" % src)
    with open(out, "w") as f:
        f.write('#line 1 "%s"\n' % name + new)


if __name__ == "__main__":
    main()
