"""The project's layout: no import circle in the package, between its modules or its packages
(folders); nothing imports train_net.py, no tool imports tests/ or another tool; the public config
loader (and the plain detectron2 load); README/docs whose relative links all resolve."""

import ast
import os
import re
import tempfile
import unittest

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import quant_mimic
from quant_mimic import add_quantmimic_config
from quant_mimic.teacher import build_teacher_cfg

from .common import FAST_OPTS, REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "projects", "QuantMimic", "quant_mimic")
WIDER_QM = os.path.join(REPO_ROOT, "configs", "WIDERFace", "rfcn_VGG-1-32_quant_mimic.yaml")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def import_graph():
    """{module: {package modules it imports}} from every import statement of the package, those
    inside functions too (a lazy import still makes a circle of responsibilities)."""
    modules = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                modules[_module_name(os.path.join(root, f))] = os.path.join(root, f)
    graph = {}
    for name, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        deps = set()
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = base[: len(base) - node.level + 1]
                    mod = ".".join(parent + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph, skip_own_submodules: bool = True):
    """One import circle as a list of modules, or None (``skip_own_submodules``: an edge between a
    package and its own submodules, an ``__init__`` re-export, is not one)."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            own = m.startswith(n + ".") or n.startswith(m + ".") and m == n.rsplit(".", 1)[0]
            if own and skip_own_submodules:
                continue  # a package and its own submodules (__init__ re-exports)
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def package_of(module: str, graph) -> str:
    """The package (folder) a module lives in; a package's ``__init__`` is the package itself."""
    if any(k.startswith(module + ".") for k in graph):
        return module
    return module.rsplit(".", 1)[0]


def package_graph(graph):
    """{package: {packages its modules import}} of a module graph; a package's ``__init__`` (which
    re-exports, and registers the project's components) does not count."""
    out = {package_of(m, graph): set() for m in graph}
    for module, deps in graph.items():
        if any(k.startswith(module + ".") for k in graph):
            continue
        a = package_of(module, graph)
        out[a] |= {package_of(d, graph) for d in deps} - {a}
    return out


TOOLS = os.path.join(REPO_ROOT, "tools")


def _imported_names(path: str):
    """Every module name an import statement of ``path`` names (those inside functions too)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module or "")
    return names, tree


class TestImportGraph(unittest.TestCase):
    def test_no_import_circle(self):
        graph = import_graph()
        self.assertIn("quant_mimic.pipeline.runner", graph)
        self.assertIsNone(find_cycle(graph))
        # the low-level statistics sit below the trainer; the evaluation pass above it
        self.assertNotIn("quant_mimic.engine", graph["quant_mimic.feature_statistics"])
        self.assertIn("quant_mimic.engine", graph["quant_mimic.diagnostics"])
        self.assertNotIn("quant_mimic.diagnostics", graph["quant_mimic.stride_calibration"])

    def test_no_loop_between_packages(self):
        packages = package_graph(import_graph())
        self.assertIn("quant_mimic.export", packages)
        self.assertIsNone(find_cycle(packages, skip_own_submodules=False))
        # the pipeline drives pretraining and training, never the reverse
        self.assertNotIn("quant_mimic.pipeline", packages["quant_mimic"])

    def test_package_loop_is_found(self):
        graph = {"p": {"p.a"}, "p.a": {"p.q.b"}, "p.q": set(), "p.q.b": {"p.c"}, "p.c": set()}
        self.assertEqual(find_cycle(package_graph(graph), False), ["p", "p.q", "p"])

    def test_nothing_imports_train_net(self):
        files = [os.path.join(TOOLS, f) for f in os.listdir(TOOLS) if f.endswith(".py")]
        for root, _, names in os.walk(PACKAGE):
            files += [os.path.join(root, f) for f in names if f.endswith(".py")]
        for path in files:
            names, tree = _imported_names(path)
            self.assertNotIn("train_net", names, path)
            with open(path) as f:
                self.assertNotRegex(f.read(), r",\s*\"train_net\.py\"", path)  # loaded by path

    def test_no_tool_imports_tests_or_another_tool(self):
        tools = {f[:-3] for f in os.listdir(TOOLS) if f.endswith(".py")}
        for tool in sorted(tools):
            names, _ = _imported_names(os.path.join(TOOLS, tool + ".py"))
            tops = {n.split(".")[0] for n in names}
            self.assertNotIn("tests", tops, tool)
            self.assertFalse(tops & (tools - {tool}), f"tools/{tool}.py imports {tops & tools}")

    def test_export_is_a_package_and_mimic_rcnn_is_small(self):
        self.assertTrue(os.path.isfile(os.path.join(PACKAGE, "export", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(PACKAGE, "export.py")))
        import inspect

        from quant_mimic.mimic_rcnn import MimicRCNN

        self.assertLess(len(inspect.getsource(MimicRCNN).splitlines()), 160)

    def test_cycle_finder_finds_one(self):
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set()}))


class TestGetConfig(unittest.TestCase):
    def test_get_config_like_train_net(self):
        for path in (WIDER_QM, "WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml"):
            cfg = quant_mimic.get_config(path, ["MODEL.MIMIC.LOSS_WEIGHT", "10"])
            self.assertFalse(cfg.is_frozen())
            self.assertEqual(cfg.MODEL.MIMIC.LOSS_WEIGHT, 10.0)
            teacher = cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE
            self.assertTrue(os.path.isabs(teacher) and os.path.isfile(teacher), teacher)
        with self.assertRaisesRegex(FileNotFoundError, "nope.yaml"):
            quant_mimic.get_config("nope.yaml")

    def test_plain_detectron2_load_builds(self):
        # The notebook way: get_cfg, add_quantmimic_config, merge_from_file, build_model, from
        # another working directory: the teacher path is relative to the yaml, like _BASE_.
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as d:
            os.chdir(d)
            try:
                cfg = get_cfg()
                add_quantmimic_config(cfg)
                cfg.merge_from_file(WIDER_QM)
                cfg.merge_from_list(FAST_OPTS)
                expected = quant_mimic.get_config(WIDER_QM).MODEL.MIMIC.TEACHER.CONFIG_FILE
                self.assertEqual(cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE, expected)
                model = build_model(cfg)
                self.assertTrue(hasattr(model, "teacher"))
                cfg2 = cfg.clone()  # the resolving node survives clone
                cfg2.merge_from_file(WIDER_QM)
                self.assertEqual(cfg2.MODEL.MIMIC.TEACHER.CONFIG_FILE, expected)
            finally:
                os.chdir(cwd)

    def test_unresolved_teacher_path_says_how_to_load(self):
        cfg = get_cfg()
        add_quantmimic_config(cfg)
        cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE = "rfcn_VGG-1-4_teacher_quantized.yaml"
        with self.assertRaises(FileNotFoundError) as e:
            build_teacher_cfg(cfg)
        msg = str(e.exception)
        for text in ("relative to that yaml", "quant_mimic.get_config", "add_quantmimic_config"):
            self.assertIn(text, msg)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(md_path: str):
    """(target, resolved path) of every relative link of a markdown file (anchors dropped)."""
    with open(md_path) as f:
        text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        out.append((target, os.path.normpath(os.path.join(os.path.dirname(md_path), path))))
    return out


def markdown_files():
    files = [os.path.join(REPO_ROOT, "README.md")]
    for root in ("docs", "datasets"):
        d = os.path.join(REPO_ROOT, root)
        files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".md"))
    return files


class TestDocs(unittest.TestCase):
    def test_readme_is_one_screen_of_what_and_how(self):
        self.assertLessEqual(os.path.getsize(os.path.join(REPO_ROOT, "README.md")), 15 * 1024)

    def test_every_relative_link_resolves(self):
        checked = 0
        for md in markdown_files():
            for target, path in relative_links(md):
                self.assertTrue(os.path.exists(path), f"{md}: broken link {target}")
                checked += 1
        self.assertGreater(checked, 10)

    def test_no_internal_issue_numbers(self):
        # A reader outside cannot open the project's issues: say what was measured or decided.
        pattern = re.compile(r"\bissue(?:s? +#?\d+|'s\b)|\(#\d+\)", re.IGNORECASE)
        paths = []
        for top in ("README.md", "Makefile", "train_net.py", "docs", "configs", "projects",
                    "tools", "tests", "datasets"):  # fmt: skip
            top = os.path.join(REPO_ROOT, top)
            if os.path.isfile(top):
                paths.append(top)
            for root, _, files in os.walk(top):
                paths += [os.path.join(root, f) for f in files]
        found = []
        for path in paths:
            if path.endswith((".md", ".py", ".yaml", ".sh", "Makefile")):
                with open(path, encoding="utf-8") as fh:
                    found += [f"{path}:{n}" for n, line in enumerate(fh, 1) if pattern.search(line)]
        self.assertGreater(len(paths), 100)
        self.assertEqual(found, [])
        self.assertTrue(pattern.search("the host of issue" + " 22") and pattern.search("(#" + "4)"))
        self.assertTrue(pattern.search("the issue" + "'s goal"))

    def test_link_checker_catches_a_missing_file(self):
        with tempfile.TemporaryDirectory() as d:
            md = os.path.join(d, "x.md")
            with open(md, "w") as f:
                f.write("[a](missing.md) [b](https://x.org/y) [c](#top)\n```\n[d](no.md)\n```\n")
            self.assertEqual(relative_links(md), [("missing.md", os.path.join(d, "missing.md"))])
