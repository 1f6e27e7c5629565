"""Command line and start-up: --check-config, key checks, chain order and process titles."""

import os
import re
import shutil
import signal
import tempfile
import time
import unittest
from pathlib import Path

import harness


def line_of(path, needle):
    """Return the 1-based number of the first line of the file at path containing needle."""
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not found in {path}")


def location_pattern(path, *lines):
    """Return a regex for "path:line:column:" with any of the given line numbers."""
    choices = "|".join(str(line) for line in lines)
    return re.compile(rf"{re.escape(str(path))}:({choices}):\d+:")


class ConfigFileTest(unittest.TestCase):
    """Each test writes one config into a fresh folder and runs cloister on it."""

    def setUp(self):
        self.pki = harness.pki()
        self.folder = Path(tempfile.mkdtemp(prefix="cli-", dir=harness.run_dir()))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)

    def document(self, cert=None, key_file=None, **sections):
        """Return a valid config for one vhost, with a listener on a free port."""
        cert = cert or self.pki.rsa
        document = harness.config(
            [harness.vhost(["www.example.test"], "127.0.0.1:9", cert, default=True)],
            [cert], **sections)
        if key_file is not None:
            document["key"][0]["file"] = str(key_file)
        document["listener"] = [{"address": f"127.0.0.1:{harness.free_port()}"}]
        return document

    def write(self, document):
        return harness.write_config(self.folder, document)

    def output(self, result):
        return result.stdout + result.stderr


class CheckConfigTest(ConfigFileTest):
    def test_valid_config(self):
        path = self.write(self.document())
        result = harness.run_cloister("--config", path, "--check-config")
        self.assertEqual(result.returncode, 0, self.output(result))
        self.assertIn(f"configuration {path} is valid", self.output(result))

    def test_relative_paths_resolve_against_config_folder(self):
        (self.folder / "keys").mkdir()
        (self.folder / "certs").mkdir()
        shutil.copy(self.pki.p256.key, self.folder / "keys" / "site.key")
        shutil.copy(self.pki.p256.chain, self.folder / "certs" / "site.pem")
        document = self.document(self.pki.p256)
        document["key"][0]["file"] = "keys/site.key"
        document["vhost"][0]["certificate"][0]["chain"] = "certs/site.pem"
        path = self.write(document)
        result = harness.run_cloister("--config", path, "--check-config", cwd=Path("/"))
        self.assertEqual(result.returncode, 0, self.output(result))

    def test_syntax_error_location(self):
        text = harness.to_toml(self.document()) + "\n[unterminated\n"
        path = self.write(text)
        result = harness.run_cloister("--config", path, "--check-config")
        self.assertEqual(result.returncode, 2, self.output(result))
        header_line = len(text.splitlines())
        self.assertRegex(self.output(result), location_pattern(path, header_line))

    def test_invalid_value_location(self):
        path = self.write(self.document(tls={"min-version": "1.1"}))
        result = harness.run_cloister("--config", path, "--check-config")
        self.assertEqual(result.returncode, 2, self.output(result))
        self.assertRegex(self.output(result),
                         location_pattern(path, line_of(path, "min-version")))
        self.assertIn("min-version", self.output(result))

    def test_unknown_key_reference_location(self):
        document = self.document()
        document["vhost"][0]["certificate"][0]["key"] = "no-such-key"
        path = self.write(document)
        result = harness.run_cloister("--config", path, "--check-config")
        self.assertEqual(result.returncode, 2, self.output(result))
        # The location is the reference itself or its [[vhost.certificate]] header.
        lines = (line_of(path, '"no-such-key"'), line_of(path, "[[vhost.certificate]]"))
        self.assertRegex(self.output(result), location_pattern(path, *lines))
        self.assertIn("no-such-key", self.output(result))

    def test_missing_chain_file(self):
        document = self.document()
        missing = self.folder / "missing.pem"
        document["vhost"][0]["certificate"][0]["chain"] = str(missing)
        path = self.write(document)
        result = harness.run_cloister("--config", path, "--check-config")
        self.assertEqual(result.returncode, 2, self.output(result))
        self.assertIn(str(missing), self.output(result))


class KeyMismatchTest(ConfigFileTest):
    """A [[key]] whose private key does not belong to the certificate that names it."""

    def setUp(self):
        super().setUp()
        self.other_key = self.pki.make_key(f"other-{self._testMethodName}", "rsa")
        self.path = self.write(self.document(self.pki.rsa, key_file=self.other_key))

    def assert_names_both_files(self, result):
        output = self.output(result)
        self.assertIn(str(self.pki.rsa.chain), output)
        self.assertIn(str(self.other_key), output)

    def test_check_config_names_both_files(self):
        result = harness.run_cloister("--config", self.path, "--check-config")
        self.assertEqual(result.returncode, 2, self.output(result))
        self.assert_names_both_files(result)

    def test_start_exits_naming_both_files(self):
        result = harness.run_cloister("--config", self.path, timeout=30)
        self.assertNotEqual(result.returncode, 0, self.output(result))
        self.assertNotRegex(self.output(result), harness.STARTED_PATTERN)
        self.assert_names_both_files(result)


class ChainOrderTest(unittest.TestCase):
    """Intermediates listed out of issuer order are sent in issuer order, with a warning."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.chain = pki.make_chain("order", sans=["chain.example.test", "*.chain.example.test"])
        leaf, i1, i2 = cls.chain.leaf, cls.chain.i1, cls.chain.i2
        cls.wrong_bundle = pki.write_bundle("order-wrong", [leaf, i1, i2])
        cls.right_bundle = pki.write_bundle("order-right", [leaf, i2, i1])
        cls.backend = harness.HttpBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        wrong = harness.vhost(["chain.example.test"], cls.backend, leaf, default=True)
        wrong["certificate"][0]["chain"] = str(cls.wrong_bundle)
        right = harness.vhost(["right.chain.example.test"], cls.backend, leaf)
        right["certificate"][0]["chain"] = str(cls.right_bundle)
        cls.daemon = harness.Daemon(harness.config([wrong, right], [leaf]))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def expected_subjects(self):
        return [f"CN = {cert.subject}" for cert in (self.chain.leaf, self.chain.i2, self.chain.i1)]

    def served_chain(self, servername):
        result = harness.s_client(self.daemon.port, servername=servername,
                                  cafile=self.chain.root.cert, verify_hostname=servername,
                                  showcerts=True, wait_for_close=False)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(result.verify_line, "Verify return code: 0 (ok)", result.describe())
        return result.chain_subjects()

    def test_wrong_order_served_in_issuer_order(self):
        self.assertEqual(self.served_chain("chain.example.test"), self.expected_subjects())

    def test_right_order_served_unchanged(self):
        self.assertEqual(self.served_chain("right.chain.example.test"),
                         self.expected_subjects())

    def test_wrong_order_logged_as_warning(self):
        warnings = [line for line in self.daemon.log.splitlines()
                    if str(self.wrong_bundle) in line and re.search("warn", line, re.I)]
        self.assertTrue(warnings, self.daemon.log)

    def test_right_order_not_warned(self):
        mentions = [line for line in self.daemon.log.splitlines()
                    if str(self.right_bundle) in line and re.search("warn", line, re.I)]
        self.assertEqual(mentions, [])


class ProcessTitleTest(unittest.TestCase):
    """ps shows each process's role: supervisor, key, spare or live connection."""

    SPARES = 2

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.EchoBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        document = harness.config(
            [harness.vhost(["www.example.test"], cls.backend, pki.p256, default=True)],
            [pki.p256], limits={"spare-children": cls.SPARES})
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def spares(self, children):
        return [p for p in children if p.title == "cloister: connection (spare)"]

    def test_supervisor_title(self):
        titles = {p.pid: p.title for p in harness.process_table()}
        self.assertEqual(titles.get(self.daemon.pid), "cloister: supervisor")

    def test_one_key_process(self):
        children = self.daemon.children()
        keys = [p for p in children if p.title == "cloister: key"]
        self.assertEqual(len(keys), 1, children)

    def test_every_child_titled_by_role(self):
        role = re.compile(r"^cloister: (key|connection \(spare\)|connection \d+ \S+)$")
        for child in self.daemon.children():
            self.assertRegex(child.title, role)

    def test_spare_connection_titles(self):
        children = self.daemon.wait_for_children(lambda c: len(self.spares(c)) == self.SPARES)
        self.assertEqual(len(self.spares(children)), self.SPARES)

    def test_live_connection_title(self):
        with harness.tls_connect(self.daemon.port) as connection:
            connection.sendall(b"ping")
            self.assertEqual(connection.recv(16), b"ping")
            local_port = connection.getsockname()[1]
            pattern = re.compile(r"^cloister: connection (\d+) (\S+)$")
            live = [p for p in self.daemon.children() if pattern.match(p.title)]
            self.assertEqual(len(live), 1, self.daemon.children())
            peer = pattern.match(live[0].title).group(2)
            self.assertIn("127.0.0.1", peer)
            self.assertIn(str(local_port), peer)
            connection.unwrap()
        # The connection process exits and a new spare replaces it.
        self.daemon.wait_for_children(
            lambda c: live[0].pid not in {p.pid for p in c}
            and len(self.spares(c)) == self.SPARES)

    def test_sigusr1_forwarded_to_key_process(self):
        mark = self.daemon.log_mark()
        self.daemon.process.send_signal(signal.SIGUSR1)
        match = self.daemon.wait_for_log(r"key process stats: channels=\d+ signatures=\d+ "
                                         r"refused=\d+ malformed=\d+", since=mark)
        self.assertTrue(match)

    def test_no_zombie_children(self):
        self.daemon.assert_no_zombies()


class InterruptTest(unittest.TestCase):
    """Ctrl-C in a terminal sends SIGINT to the whole process group. Only the supervisor acts
    on it: a live connection is drained, and every process exits cleanly."""

    def test_sigint_to_process_group_drains_live_connection(self):
        pki = harness.pki()
        with harness.EchoBackend() as backend:
            document = harness.config(
                [harness.vhost(["www.example.test"], backend, pki.p256, default=True)],
                [pki.p256])
            with harness.Daemon(document) as daemon:
                self.check_interrupt(daemon)

    def check_interrupt(self, daemon):
        with harness.tls_connect(daemon.port) as held:
            held.sendall(b"before")
            self.assertEqual(held.recv(16), b"before")
            mark = daemon.log_mark()
            os.killpg(daemon.pid, signal.SIGINT)
            daemon.wait_for_log(r"stopping: draining 1 connections", since=mark)
            held.sendall(b"after")
            self.assertEqual(held.recv(16), b"after")
            held.unwrap()
        status = daemon.process.wait(timeout=harness.STOP_TIMEOUT)
        log = daemon.log[mark:]
        self.assertEqual(status, 0, log)
        self.assertIn("stopped", log)
        record = daemon.wait_for_record(mark, result="ok")
        self.assertEqual(record.get("bytes_in"), str(len(b"beforeafter")), record)
        self.assertIn("control channel closed by the supervisor; key process stopping", log)
        self.assertNotIn("stopping on SIGINT", log)
        self.assertNotRegex(log, r"exited \((signal|status [1-9])")

    def test_sighup_to_process_group_keeps_connections(self):
        pki = harness.pki()
        with harness.EchoBackend() as backend:
            document = harness.config(
                [harness.vhost(["www.example.test"], backend, pki.p256, default=True)],
                [pki.p256])
            with harness.Daemon(document) as daemon:
                with harness.tls_connect(daemon.port) as held:
                    held.sendall(b"before")
                    self.assertEqual(held.recv(16), b"before")
                    mark = daemon.log_mark()
                    # A terminal hangup reaches every process of the group.
                    os.killpg(daemon.pid, signal.SIGHUP)
                    daemon.wait_for_log(r"reloaded: 1 listeners", since=mark)
                    time.sleep(0.5)
                    held.sendall(b"after")
                    self.assertEqual(held.recv(16), b"after")
                    held.unwrap()
                record = daemon.wait_for_record(mark, result="ok")
                self.assertEqual(record.get("bytes_in"), str(len(b"beforeafter")), record)
                self.assertNotRegex(daemon.log[mark:], r"exited \((signal|status [1-9])")


if __name__ == "__main__":
    unittest.main()
