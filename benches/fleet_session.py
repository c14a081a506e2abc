"""A small synthetic agent session on a workspace volume, seeded: edits some source files in place
(appending lines), adds a dependency (a directory of text files), writes a random binary blob
(incompressible, like database pages), deletes a few files. Prints the bytes of content it wrote
(new files plus the full size of edited ones): the session's logical delta.

Used by benches/fleet.sh instead of make-workspace.sh --session, which installs from the npm
registry and takes far longer than the 200 sessions the fleet bench applies."""
import os
import random
import sys

root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
files = []
for d, _, names in os.walk(root):
    if "/node_modules/" in d + "/" or "/.git/" in d + "/" or "/.venv/" in d + "/":
        continue
    files += [os.path.join(d, n) for n in names if n.endswith((".ts", ".tsx", ".py", ".md", ".json"))]
files.sort()
delta = 0
for path in rng.sample(files, min(20, len(files))):
    if os.path.islink(path):
        continue
    with open(path, "a") as f:
        f.write(f"\n// session {seed}: {rng.getrandbits(64):x}\n")
    delta += os.path.getsize(path)
dep = os.path.join(root, "node_modules", f"agent-dep-{seed}")
os.makedirs(dep, exist_ok=True)
for i in range(40):
    text = "".join(f"export const v{j} = '{rng.getrandbits(48):x}';\n" for j in range(rng.randint(50, 400)))
    with open(os.path.join(dep, f"m{i}.js"), "w") as f:
        f.write(text)
    delta += len(text)
blob = rng.randbytes(2 << 20)
with open(os.path.join(root, f"session-{seed}.db"), "wb") as f:
    f.write(blob)
delta += len(blob)
for path in rng.sample(files, min(3, len(files))):
    if os.path.exists(path):
        os.remove(path)
print(delta)
