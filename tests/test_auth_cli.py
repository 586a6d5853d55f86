"""
Tests for C{caxton keys create|list|revoke} (L{caxton.cli.keys}), run
through L{caxton.cli.main.main} on a data directory.
"""

from __future__ import annotations

import io
import json
import os
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from caxton.auth.audit import read_entries
from caxton.auth.keys import KeyFile, parse_token
from caxton.cli import keys as cli_keys
from caxton.cli.main import main


class KeysCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = self.mktemp()
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CAXTON_DATA_DIR"})

    def run_cli(self, *argv: str) -> Tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def create(self, name: str = "ci", role: str = "operator") -> Tuple[str, str]:
        status, out, err = self.run_cli("keys", "create", "--name", name, "--role", role, "--data-dir", self.data)
        self.assertEqual(status, 0, err)
        [token] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("token: ")]
        return parse_token(token)[0], token

    def test_create_prints_token_once(self) -> None:
        """
        C{create} prints the token and a warning to keep it; the file has
        only its hash; the audit log has the change, without the token.
        """
        status, out, err = self.run_cli("keys", "create", "--name", "ci", "--role", "operator",
                                        "--data-dir", self.data)
        self.assertEqual(status, 0)
        token = out.splitlines()[1].split(": ", 1)[1]
        key_id, secret = parse_token(token)
        self.assertIn(f"created key {key_id} (ci, operator)", out)
        self.assertIn("shown only this once", err)
        with open(os.path.join(self.data, "keys.json")) as f:
            self.assertNotIn(secret, f.read())
        record = KeyFile.in_data_dir(self.data).read().verify(token)[0]
        self.assertEqual(record.name, "ci")
        [line] = read_entries(os.path.join(self.data, "audit.log"), 10)
        self.assertEqual((line["key_id"], line["route"], line["status"]), ("cli", "keys create", 201))
        self.assertEqual(line["detail"]["created_key_id"], key_id)
        with open(os.path.join(self.data, "audit.log")) as f:
            self.assertNotIn(secret, f.read())

    def test_create_json(self) -> None:
        status, out, _ = self.run_cli("keys", "create", "--name", "a", "--role", "admin", "--json",
                                      "--data-dir", self.data)
        value = json.loads(out)
        self.assertEqual(value["key"]["role"], "admin")
        self.assertEqual(parse_token(value["token"])[0], value["key"]["id"])

    def test_list(self) -> None:
        """
        C{list} shows a table without secrets (newest first), or JSON.
        """
        status, out, _ = self.run_cli("keys", "list", "--data-dir", self.data)
        self.assertEqual(status, 0)
        self.assertIn("no keys", out)
        first, token = self.create("first", "viewer")
        second, _ = self.create("second", "admin")
        status, out, _ = self.run_cli("keys", "list", "--data-dir", self.data)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "NAME", "ROLE", "TOKEN", "CREATED", "REVOKED"])
        self.assertTrue(lines[1].startswith(second))
        self.assertIn(f"cxk_{first}_...{token[-4:]}", lines[2])
        self.assertNotIn(parse_token(token)[1], out)
        status, out, _ = self.run_cli("keys", "list", "--json", "--data-dir", self.data)
        self.assertEqual([k["name"] for k in json.loads(out)["keys"]], ["second", "first"])

    def test_revoke(self) -> None:
        key_id, token = self.create()
        status, out, _ = self.run_cli("keys", "revoke", key_id, "--data-dir", self.data)
        self.assertEqual(status, 0)
        self.assertIn(f"revoked key {key_id}", out)
        self.assertEqual(KeyFile.in_data_dir(self.data).read().verify(token)[1], "revoked key")
        status, out, _ = self.run_cli("keys", "list", "--data-dir", self.data)
        self.assertRegex(out.splitlines()[1], r"\d\d:\d\d:\d\d$")  # when it was revoked
        entries = read_entries(os.path.join(self.data, "audit.log"), 10)
        self.assertEqual([e["route"] for e in entries], ["keys revoke", "keys create"])

    def test_exit_codes(self) -> None:
        """
        Misuse (bad role or name, missing option) exits 2; an operational
        failure (unknown key, broken file) exits 1 with one line.
        """
        self.assertEqual(self.run_cli("keys", "create", "--name", "a", "--role", "root",
                                      "--data-dir", self.data)[0], 2)
        self.assertEqual(self.run_cli("keys", "create", "--name", "", "--role", "admin",
                                      "--data-dir", self.data)[0], 2)
        self.assertEqual(self.run_cli("keys", "create", "--role", "admin")[0], 2)
        self.assertEqual(self.run_cli("keys")[0], 2)
        status, _, err = self.run_cli("keys", "revoke", "0123456789ab", "--data-dir", self.data)
        self.assertEqual((status, err.strip()), (1, "caxton: no key with id '0123456789ab'"))
        os.makedirs(self.data, exist_ok=True)
        with open(os.path.join(self.data, "keys.json"), "w") as f:
            f.write("[")
        status, _, err = self.run_cli("keys", "list", "--data-dir", self.data)
        self.assertEqual(status, 1)
        self.assertIn("keys.json is not valid JSON", err)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_data_dir_sources(self) -> None:
        """
        C{--data-dir} > C{$CAXTON_DATA_DIR} > C{data_dir} of C{--config} >
        C{./caxton-data}.
        """
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("data_dir: /from/file\n")

        def resolved(argv: List[str], environ: dict) -> str:
            parser_args = type("Args", (), {"data_dir": None, "config": None})()
            for name, value in zip(argv[::2], argv[1::2]):
                setattr(parser_args, name, value)
            return cli_keys.data_dir(parser_args, environ)

        self.assertEqual(resolved([], {}), "./caxton-data")
        self.assertEqual(resolved(["config", config], {}), "/from/file")
        self.assertEqual(resolved(["config", config], {"CAXTON_DATA_DIR": "/env"}), "/env")
        self.assertEqual(resolved(["data_dir", "/opt", "config", config], {"CAXTON_DATA_DIR": "/env"}), "/opt")

    def test_environment_data_dir(self) -> None:
        os.environ["CAXTON_DATA_DIR"] = self.data
        status, out, _ = self.run_cli("keys", "create", "--name", "e", "--role", "viewer")
        self.assertEqual(status, 0)
        self.assertEqual([r.name for r in KeyFile.in_data_dir(self.data).read().records], ["e"])
