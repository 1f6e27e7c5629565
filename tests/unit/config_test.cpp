// Tests for the TOML config loader: the example config, rejections with their exact
// messages and locations, path resolution and durations.
#include "core/config.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/fd.h"
#include "tests/unit/minimal_config.h"

namespace cloister {
namespace {

using std::chrono::milliseconds;

// The smallest valid config. Lines 1 to 14; tests append tables from line 15 on.
constexpr std::string_view kMinimal = test::kMinimalConfig;

constexpr std::string_view kListenerAndKey = R"([[listener]]
address = "127.0.0.1:8443"

[[key]]
name = "rsa"
file = "keys/rsa.key"
)";

std::string with(std::string_view extra) {
    return std::string(kMinimal) + std::string(extra);
}

// Returns the message of the config error that parse_config throws for text.
std::string error_of(std::string_view text, const std::string& source = "cloister.toml") {
    try {
        static_cast<void>(parse_config(text, source));
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        return error.what();
    }
    ADD_FAILURE() << "parse_config accepted:\n" << text;
    return {};
}

std::string address_error_of(const std::string& text) {
    try {
        static_cast<void>(SocketAddress::parse(text));
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        return error.what();
    }
    ADD_FAILURE() << "SocketAddress::parse accepted " << text;
    return {};
}

TEST(ConfigExample, LoadsFromSourceTree) {
    const std::filesystem::path dir(CLOISTER_SOURCE_DIR);
    const Config config = load_config(dir / "cloister.example.toml");

    EXPECT_EQ(config.source, (dir / "cloister.example.toml").lexically_normal());
    EXPECT_EQ(config.server.tls_backend, "openssl");
    EXPECT_EQ(config.server.log_level, LogLevel::info);
    ASSERT_EQ(config.listeners.size(), 2U);
    EXPECT_EQ(config.listeners[0].address.host, "0.0.0.0");
    EXPECT_EQ(config.listeners[0].address.port, 8443);
    EXPECT_EQ(config.listeners[1].address.host, "::");
    EXPECT_EQ(config.listeners[1].address.text, "[::]:8443");
    EXPECT_EQ(config.listeners[1].where.line, 14U);
    EXPECT_EQ(config.listeners[1].where.column, 11U);
    EXPECT_EQ(config.tls.min_version, TlsVersion::tls1_2);
    EXPECT_EQ(config.tls.max_version, TlsVersion::tls1_3);
    EXPECT_EQ(config.tls.groups, "X25519:P-256:P-384");
    EXPECT_EQ(config.tls.unknown_sni, SniMismatch::use_default);
    EXPECT_EQ(config.limits.idle_timeout, milliseconds(300'000));
    EXPECT_EQ(config.limits.buffer_size, 16384U);
    EXPECT_EQ(config.key_process.workers, 0U);
    ASSERT_EQ(config.keys.size(), 1U);
    EXPECT_EQ(config.keys[0].name, "www-rsa");
    EXPECT_EQ(config.keys[0].file, (dir / "keys/www-rsa.key").lexically_normal());
    EXPECT_FALSE(config.keys[0].passphrase_file.has_value());
    ASSERT_EQ(config.vhosts.size(), 1U);
    EXPECT_EQ(config.vhosts[0].name, "www.example.test");
    EXPECT_EQ(config.vhosts[0].server_names.size(), 2U);
    EXPECT_TRUE(config.vhosts[0].is_default);
    EXPECT_TRUE(config.vhosts[0].default_explicit);
    EXPECT_EQ(config.vhosts[0].backend.port, 8080);
    ASSERT_EQ(config.vhosts[0].certificates.size(), 1U);
    EXPECT_EQ(config.vhosts[0].certificates[0].chain,
              (dir / "certs/www-rsa.pem").lexically_normal());
    EXPECT_EQ(config.vhosts[0].certificates[0].key_index, 0U);
}

TEST(ConfigDefaults, MinimalConfig) {
    const Config config = parse_config(kMinimal, "/etc/cloister/cloister.toml");

    EXPECT_EQ(config.source, "/etc/cloister/cloister.toml");
    EXPECT_EQ(config.limits.spare_children, 4U);
    EXPECT_EQ(config.limits.max_connections, 1024U);
    EXPECT_EQ(config.limits.handshake_timeout, milliseconds(10'000));
    EXPECT_EQ(config.limits.drain_timeout, milliseconds(30'000));
    EXPECT_EQ(config.tls.missing_sni, SniMismatch::use_default);
    EXPECT_TRUE(config.tls.prefer_server_ciphers);
    EXPECT_FALSE(config.tls.rsa_key_exchange);
    EXPECT_EQ(config.key_process.max_operations_per_channel, 1U);
    EXPECT_EQ(config.key_process.stats_interval, std::chrono::seconds(60));
    EXPECT_TRUE(config.vhosts[0].is_default);
    EXPECT_FALSE(config.vhosts[0].default_explicit);
    EXPECT_EQ(config.vhosts[0].where.line, 8U);
    EXPECT_EQ(config.vhosts[0].server_name_locations.at(0).line, 9U);
    EXPECT_EQ(config.vhosts[0].server_name_locations.at(0).column, 17U);
    EXPECT_EQ(config.vhosts[0].certificates[0].key_name, "rsa");
}

TEST(ConfigValues, AllSectionsRead) {
    const Config config = parse_config(with(R"(
[server]
log-level = "warning"

[tls]
min-version = "1.3"
ciphers = "ECDHE+AESGCM"
prefer-server-ciphers = false
rsa-key-exchange = true
unknown-sni = "reject"
missing-sni = "reject"

[limits]
spare-children = 0
max-connections = 1000000
buffer-size = 1024

[key-process]
workers = 256
max-operations-per-channel = 64
stats-interval = 0
)"),
                                       "cloister.toml");

    EXPECT_EQ(config.server.log_level, LogLevel::warning);
    EXPECT_EQ(config.tls.min_version, TlsVersion::tls1_3);
    EXPECT_EQ(config.tls.ciphers, "ECDHE+AESGCM");
    EXPECT_FALSE(config.tls.prefer_server_ciphers);
    EXPECT_TRUE(config.tls.rsa_key_exchange);
    EXPECT_EQ(config.tls.unknown_sni, SniMismatch::reject);
    EXPECT_EQ(config.tls.missing_sni, SniMismatch::reject);
    EXPECT_EQ(config.limits.spare_children, 0U);
    EXPECT_EQ(config.limits.max_connections, 1'000'000U);
    EXPECT_EQ(config.limits.buffer_size, 1024U);
    EXPECT_EQ(config.key_process.workers, 256U);
    EXPECT_EQ(config.key_process.max_operations_per_channel, 64U);
    EXPECT_EQ(config.key_process.stats_interval, std::chrono::seconds(0));
}

TEST(ConfigDuration, Units) {
    const Config config = parse_config(with(R"(
[limits]
handshake-timeout = "500ms"
idle-timeout = "2h"
drain-timeout = 0
backend-connect-timeout = "3m"
key-operation-timeout = 7
)"),
                                       "cloister.toml");

    EXPECT_EQ(config.limits.handshake_timeout, milliseconds(500));
    EXPECT_EQ(config.limits.idle_timeout, milliseconds(7'200'000));
    EXPECT_EQ(config.limits.drain_timeout, milliseconds(0));
    EXPECT_EQ(config.limits.backend_connect_timeout, milliseconds(180'000));
    EXPECT_EQ(config.limits.key_operation_timeout, milliseconds(7'000));
}

TEST(ConfigDuration, Bounds) {
    const Config config = parse_config(with(R"(
[limits]
handshake-timeout = "10m"
idle-timeout = "1s"
drain-timeout = "1h"
backend-connect-timeout = "100ms"
key-operation-timeout = "60s"
)"),
                                       "cloister.toml");

    EXPECT_EQ(config.limits.handshake_timeout, milliseconds(600'000));
    EXPECT_EQ(config.limits.idle_timeout, milliseconds(1'000));
    EXPECT_EQ(config.limits.drain_timeout, milliseconds(3'600'000));
    EXPECT_EQ(config.limits.backend_connect_timeout, milliseconds(100));
    EXPECT_EQ(config.limits.key_operation_timeout, milliseconds(60'000));
}

constexpr std::string_view kHandshakeRange =
    R"(limits.handshake-timeout: expected a duration from 100ms to 10m, such as "10s" )"
    R"((units ms, s, m and h; a bare integer counts seconds), got )";

TEST(ConfigDuration, RejectsZero) {
    EXPECT_EQ(error_of(with("[limits]\nhandshake-timeout = \"0s\"\n")),
              "cloister.toml:16:21: " + std::string(kHandshakeRange) + "\"0s\"");
}

TEST(ConfigDuration, RejectsNegative) {
    EXPECT_EQ(error_of(with("[limits]\nhandshake-timeout = -5\n")),
              "cloister.toml:16:21: " + std::string(kHandshakeRange) + "-5");
    EXPECT_EQ(error_of(with("[limits]\nhandshake-timeout = \"-5s\"\n")),
              "cloister.toml:16:21: " + std::string(kHandshakeRange) + "\"-5s\"");
}

TEST(ConfigDuration, RejectsAboveMaximum) {
    EXPECT_EQ(error_of(with("[limits]\nhandshake-timeout = \"11m\"\n")),
              "cloister.toml:16:21: " + std::string(kHandshakeRange) + "\"11m\"");
    EXPECT_EQ(error_of(with("[limits]\nhandshake-timeout = \"99999999999999h\"\n")),
              "cloister.toml:16:21: " + std::string(kHandshakeRange) + "\"99999999999999h\"");
}

TEST(ConfigDuration, RejectsBadForms) {
    for (const std::string value : {"\"10\"", "\"10 s\"", "\"s\"", "\"10sec\"", "1.5", "true"}) {
        EXPECT_EQ(error_of(with("[limits]\nhandshake-timeout = " + value + "\n")),
                  "cloister.toml:16:21: " + std::string(kHandshakeRange) + value);
    }
}

TEST(ConfigDuration, IdleTimeoutRange) {
    EXPECT_EQ(error_of(with("[limits]\nidle-timeout = \"999ms\"\n")),
              "cloister.toml:16:16: limits.idle-timeout: expected a duration from 1s to 24h, "
              "such as \"10s\" (units ms, s, m and h; a bare integer counts seconds), got "
              "\"999ms\"");
}

TEST(ConfigErrors, UnknownKey) {
    EXPECT_EQ(error_of(with("[limits]\nspare-childs = 4\n")),
              "cloister.toml:16:1: unknown key 'spare-childs' in [limits]; expected one of: "
              "spare-children, max-connections, handshake-timeout, idle-timeout, "
              "drain-timeout, backend-connect-timeout, key-operation-timeout, buffer-size");
}

TEST(ConfigErrors, UnknownTopLevelKey) {
    EXPECT_EQ(error_of(with("[limit]\nspare-children = 4\n")),
              "cloister.toml:15:2: unknown key 'limit' at the top level; expected one of: "
              "server, listener, tls, limits, key-process, key, vhost, sandbox");
}

TEST(ConfigErrors, UnknownKeyInCertificate) {
    EXPECT_EQ(error_of(with("password = \"x\"\n")),
              "cloister.toml:15:1: unknown key 'password' in vhost[0].certificate[0]; expected "
              "one of: chain, key");
}

TEST(ConfigErrors, FirstUnknownKeyReported) {
    // Both keys are unknown, and the one written first is reported, not the first in key order.
    EXPECT_EQ(error_of(with("[tls]\nzeta = 1\nalpha = 2\n")),
              "cloister.toml:16:1: unknown key 'zeta' in [tls]; expected one of: min-version, "
              "max-version, ciphersuites, ciphers, groups, prefer-server-ciphers, unknown-sni, "
              "missing-sni, rsa-key-exchange, alpn-mismatch");
}

TEST(ConfigErrors, WrongType) {
    EXPECT_EQ(error_of(with("[limits]\nspare-children = \"four\"\n")),
              "cloister.toml:16:18: limits.spare-children: expected an integer from 0 to 1024, "
              "got \"four\"");
    EXPECT_EQ(error_of(with("[tls]\nprefer-server-ciphers = \"yes\"\n")),
              "cloister.toml:16:25: tls.prefer-server-ciphers: expected true or false, got "
              "\"yes\"");
    EXPECT_EQ(error_of(with("[tls]\nrsa-key-exchange = 1\n")),
              "cloister.toml:16:20: tls.rsa-key-exchange: expected true or false, got 1");
}

TEST(ConfigErrors, SectionOfWrongType) {
    const std::string text = "limits = 5\n" + std::string(kMinimal);
    EXPECT_EQ(error_of(text), "cloister.toml:1:10: limits: expected a table ([limits]), got 5");
    const std::string listener = "listener = { address = \"127.0.0.1:1\" }\n[[key]]\n";
    EXPECT_EQ(error_of(listener),
              "cloister.toml:1:12: listener: expected an array of tables ([[listener]]), got "
              "a table");
}

TEST(ConfigErrors, IntegerOutOfRange) {
    EXPECT_EQ(error_of(with("[limits]\nmax-connections = 0\n")),
              "cloister.toml:16:19: limits.max-connections: expected an integer from 1 to "
              "1000000, got 0");
    EXPECT_EQ(error_of(with("[limits]\nbuffer-size = 1023\n")),
              "cloister.toml:16:15: limits.buffer-size: expected an integer from 1024 to "
              "1048576, got 1023");
    EXPECT_EQ(error_of(with("[key-process]\nworkers = 257\n")),
              "cloister.toml:16:11: key-process.workers: expected an integer from 0 to 256, "
              "got 257");
    EXPECT_EQ(error_of(with("[key-process]\nmax-operations-per-channel = 0\n")),
              "cloister.toml:16:30: key-process.max-operations-per-channel: expected an "
              "integer from 1 to 64, got 0");
    EXPECT_EQ(error_of(with("[key-process]\nstats-interval = 86401\n")),
              "cloister.toml:16:18: key-process.stats-interval: expected an integer from 0 to "
              "86400, got 86401");
    EXPECT_EQ(error_of(with("[key-process]\nstats-interval = \"60s\"\n")),
              "cloister.toml:16:18: key-process.stats-interval: expected an integer from 0 to "
              "86400, got \"60s\"");
}

TEST(ConfigErrors, SpareChildrenAboveMaxConnections) {
    EXPECT_EQ(error_of(with("[limits]\nspare-children = 8\nmax-connections = 4\n")),
              "cloister.toml:16:18: limits.spare-children: spare-children (8) is above "
              "max-connections (4); expected spare-children <= max-connections");
    EXPECT_EQ(error_of(with("[limits]\nmax-connections = 2\n")),
              "cloister.toml:16:19: limits.max-connections: spare-children (4) is above "
              "max-connections (2); expected spare-children <= max-connections");
}

TEST(ConfigErrors, MinVersionAboveMax) {
    EXPECT_EQ(error_of(with("[tls]\nmin-version = \"1.3\"\nmax-version = \"1.2\"\n")),
              "cloister.toml:16:15: tls.min-version: tls.min-version is above "
              "tls.max-version; expected min-version <= max-version");
}

TEST(ConfigErrors, UnknownChoice) {
    EXPECT_EQ(error_of(with("[tls]\nmax-version = \"1.1\"\n")),
              "cloister.toml:16:15: tls.max-version: expected \"1.2\" or \"1.3\", got \"1.1\"");
    EXPECT_EQ(error_of(with("[tls]\nunknown-sni = \"strict\"\n")),
              "cloister.toml:16:15: tls.unknown-sni: expected \"default\" or \"reject\", got "
              "\"strict\"");
    EXPECT_EQ(error_of(with("[server]\nlog-level = \"verbose\"\n")),
              "cloister.toml:16:13: server.log-level: expected \"debug\", \"info\", \"warning\" "
              "or \"error\", got \"verbose\"");
}

TEST(ConfigErrors, UnknownTlsBackend) {
    EXPECT_EQ(error_of(with("[server]\ntls-backend = \"gnutls\"\n")),
              "cloister.toml:16:15: server.tls-backend: expected \"openssl\" or \"botan\", got "
              "\"gnutls\"");
}

TEST(ConfigBotan, VersionRangeEndsAtTls12) {
    const Config botan = parse_config(with("[server]\ntls-backend = \"botan\"\n"), "c.toml");
    EXPECT_EQ(botan.server.tls_backend, "botan");
    EXPECT_EQ(botan.tls.min_version, TlsVersion::tls1_2);
    EXPECT_EQ(botan.tls.max_version, TlsVersion::tls1_2);
    const Config openssl = parse_config(with("[server]\ntls-backend = \"openssl\"\n"), "c.toml");
    EXPECT_EQ(openssl.tls.max_version, TlsVersion::tls1_3);
    const Config explicit_12 = parse_config(
        with("[server]\ntls-backend = \"botan\"\n[tls]\nmax-version = \"1.2\"\n"), "c.toml");
    EXPECT_EQ(explicit_12.tls.max_version, TlsVersion::tls1_2);
}

TEST(ConfigBotan, Tls13Rejected) {
    const std::string problem =
        "\"1.3\" needs TLS 1.3, and tls-backend \"botan\" (Botan 2.19) speaks TLS 1.2 only; "
        "expected \"1.2\", or tls-backend = \"openssl\" for TLS 1.3";
    EXPECT_EQ(error_of(with("[server]\ntls-backend = \"botan\"\n[tls]\nmax-version = \"1.3\"\n")),
              "cloister.toml:18:15: tls.max-version: " + problem);
    EXPECT_EQ(error_of(with("[server]\ntls-backend = \"botan\"\n[tls]\nmin-version = \"1.3\"\n")),
              "cloister.toml:18:15: tls.min-version: " + problem);
}

// Returns kMinimal with line inserted into the [[vhost]] table, as line 11.
std::string with_vhost_line(std::string_view line) {
    std::string text(kMinimal);
    const std::string_view anchor = "backend = \"127.0.0.1:8080\"\n";
    text.insert(text.find(anchor) + anchor.size(), std::string(line) + "\n");
    return text;
}

TEST(ConfigAlpn, ProtocolsKeepTheirOrder) {
    const Config config =
        parse_config(with_vhost_line(R"(alpn = ["h2", "http/1.1"])"), "cloister.toml");
    EXPECT_EQ(config.vhosts.at(0).alpn, (std::vector<std::string>{"h2", "http/1.1"}));
    EXPECT_EQ(config.tls.alpn_mismatch, AlpnMismatch::continue_without_alpn);
    const Config none = parse_config(kMinimal, "cloister.toml");
    EXPECT_TRUE(none.vhosts.at(0).alpn.empty());
}

TEST(ConfigAlpn, MismatchPolicy) {
    const Config reject = parse_config(with("[tls]\nalpn-mismatch = \"reject\"\n"), "c.toml");
    EXPECT_EQ(reject.tls.alpn_mismatch, AlpnMismatch::reject);
    const Config proceed = parse_config(with("[tls]\nalpn-mismatch = \"continue\"\n"), "c.toml");
    EXPECT_EQ(proceed.tls.alpn_mismatch, AlpnMismatch::continue_without_alpn);
    EXPECT_EQ(error_of(with("[tls]\nalpn-mismatch = \"ignore\"\n")),
              "cloister.toml:16:17: tls.alpn-mismatch: expected \"continue\" or \"reject\", got "
              "\"ignore\"");
}

TEST(ConfigAlpn, InvalidNamesRejected) {
    const std::string expected =
        "expected a protocol name of 1 to 255 bytes such as \"h2\" or \"http/1.1\"";
    EXPECT_EQ(error_of(with_vhost_line(R"(alpn = ["h2", 7])")),
              "cloister.toml:11:15: vhost[0].alpn[1]: " + expected + ", got 7");
    EXPECT_EQ(error_of(with_vhost_line(R"(alpn = [""])")),
              "cloister.toml:11:9: vhost[0].alpn[0]: " + expected + ", got 0 bytes");
    const std::string long_name(256, 'a');
    EXPECT_EQ(error_of(with_vhost_line("alpn = [\"" + long_name + "\"]")),
              "cloister.toml:11:9: vhost[0].alpn[0]: " + expected + ", got 256 bytes");
    EXPECT_EQ(error_of(with_vhost_line(R"(alpn = ["h2", "h2"])")),
              "cloister.toml:11:15: vhost[0].alpn[1]: \"h2\" is listed twice; expected each "
              "protocol once");
    EXPECT_EQ(error_of(with_vhost_line(R"(alpn = "h2")")),
              "cloister.toml:11:8: vhost[0].alpn: expected an array, got \"h2\"");
}

TEST(ConfigAlpn, LongestNameAccepted) {
    const std::string name(255, 'a');
    const Config config = parse_config(with_vhost_line("alpn = [\"" + name + "\"]"), "c.toml");
    EXPECT_EQ(config.vhosts.at(0).alpn, std::vector<std::string>{name});
}

TEST(ConfigErrors, EmptyOrControlString) {
    EXPECT_EQ(error_of(with("[tls]\nciphers = \"\"\n")),
              "cloister.toml:16:11: tls.ciphers: expected an OpenSSL cipher list such as "
              "\"ECDHE+AESGCM:ECDHE+CHACHA20\", got \"\"");
    EXPECT_EQ(error_of(with("[tls]\ngroups = \"X25519\\u0000\"\n")),
              "cloister.toml:16:10: tls.groups: expected an OpenSSL group list such as "
              "\"X25519:P-256\", without control characters, got \"X25519\\u0000\"");
}

TEST(ConfigErrors, MissingListener) {
    const std::string text(kMinimal.substr(kMinimal.find("[[key]]")));
    EXPECT_EQ(error_of(text),
              "cloister.toml:1:1: listener is missing; expected at least one [[listener]] "
              "with an address such as \"0.0.0.0:8443\"");
    EXPECT_EQ(error_of("listener = []\n" + text),
              "cloister.toml:1:1: listener is missing; expected at least one [[listener]] "
              "with an address such as \"0.0.0.0:8443\"");
}

TEST(ConfigErrors, MissingKeyAndVhost) {
    EXPECT_EQ(error_of("[[listener]]\naddress = \"127.0.0.1:1\"\n"),
              "cloister.toml:1:1: key is missing; expected at least one [[key]] with a name "
              "and a file");
    EXPECT_EQ(error_of(kListenerAndKey),
              "cloister.toml:1:1: vhost is missing; expected at least one [[vhost]] with a "
              "backend and a certificate");
}

TEST(ConfigErrors, MissingRequiredKeyNamesTable) {
    EXPECT_EQ(error_of(std::string(kListenerAndKey) + "\n[[vhost]]\nserver-names = [\"a.test\"]\n"
                                                      "[[vhost.certificate]]\nchain = \"c.pem\"\n"
                                                      "key = \"rsa\"\n"),
              "cloister.toml:8:1: vhost[0].backend is missing; expected an address of the form "
              "\"IPV4:PORT\", \"[IPV6]:PORT\", \"HOSTNAME:PORT\" or \"unix:/ABSOLUTE/PATH\"");
    EXPECT_EQ(error_of(std::string(kListenerAndKey) + "\n[[vhost]]\nbackend = \"127.0.0.1:1\"\n"),
              "cloister.toml:8:1: vhost[0].certificate is missing; expected at least one "
              "[[vhost.certificate]] with a chain and a key");
    EXPECT_EQ(error_of(with("[[vhost.certificate]]\nkey = \"rsa\"\n")),
              "cloister.toml:15:1: vhost[0].certificate[1].chain is missing; expected the path "
              "of a PEM certificate chain, leaf first");
    EXPECT_EQ(error_of(with("[[key]]\nfile = \"k.pem\"\n")),
              "cloister.toml:15:1: key[1].name is missing; expected a non-empty key name");
}

TEST(ConfigErrors, UnknownKeyNameInCertificate) {
    EXPECT_EQ(error_of(with("[[key]]\nname = \"ec\"\nfile = \"ec.key\"\n"
                            "[[vhost]]\nserver-names = [\"b.test\"]\nbackend = \"[::1]:80\"\n"
                            "[[vhost.certificate]]\nchain = \"b.pem\"\nkey = \"ecdsa\"\n")),
              "cloister.toml:23:7: vhost[1].certificate[0].key: no [[key]] is named \"ecdsa\"; "
              "expected one of: \"rsa\", \"ec\"");
}

TEST(ConfigKeys, IndexFollowsKeyOrder) {
    const Config config = parse_config(with("[[key]]\nname = \"ec\"\nfile = \"ec.key\"\n"
                                            "passphrase-file = \"/run/ec.pass\"\n"
                                            "[[vhost.certificate]]\nchain = \"ec.pem\"\n"
                                            "key = \"ec\"\n"),
                                       "/etc/cloister/cloister.toml");

    ASSERT_EQ(config.vhosts[0].certificates.size(), 2U);
    EXPECT_EQ(config.vhosts[0].certificates[0].key_index, 0U);
    EXPECT_EQ(config.vhosts[0].certificates[1].key_index, 1U);
    EXPECT_EQ(config.keys[1].passphrase_file, std::filesystem::path("/run/ec.pass"));
}

TEST(ConfigErrors, DuplicateKeyNames) {
    EXPECT_EQ(error_of(with("[[key]]\nname = \"rsa\"\nfile = \"other.key\"\n")),
              "cloister.toml:16:8: key[1].name: duplicate key name \"rsa\", first defined at "
              "cloister.toml:4:1; expected a unique name for each [[key]]");
}

constexpr std::string_view kSecondVhost = R"(
[[vhost]]
server-names = ["api.example.test"]
backend = "unix:/run/api.sock"
default = true

[[vhost.certificate]]
chain = "certs/api.pem"
key = "rsa"
)";

TEST(ConfigVhosts, ExplicitDefault) {
    const Config config = parse_config(with(kSecondVhost), "cloister.toml");

    ASSERT_EQ(config.vhosts.size(), 2U);
    EXPECT_FALSE(config.vhosts[0].is_default);
    EXPECT_TRUE(config.vhosts[1].is_default);
    EXPECT_TRUE(config.vhosts[1].default_explicit);
    EXPECT_EQ(config.vhosts[1].backend.kind, SocketAddress::Kind::unix_socket);
    EXPECT_EQ(config.vhosts[1].backend.path, "/run/api.sock");
}

TEST(ConfigErrors, TwoDefaults) {
    std::string text = with(kSecondVhost) + std::string(kSecondVhost);
    text.replace(text.rfind("api.example.test"), 3, "img");
    EXPECT_EQ(error_of(text),
              "cloister.toml:28:11: vhost[2].default: vhost[1] at cloister.toml:19:11 is "
              "already the default; expected default = true in at most one [[vhost]]");
}

TEST(ConfigErrors, DuplicateServerNameInOtherCase) {
    std::string text = with(kSecondVhost);
    text.replace(text.find("api.example.test"), 16, "WWW.Example.Test");
    EXPECT_EQ(error_of(text),
              "cloister.toml:17:17: vhost[1].server-names[0]: duplicate server name "
              "\"www.example.test\", first listed as vhost[0].server-names[0] at "
              "cloister.toml:9:17; expected each name once across all vhosts (names are "
              "case-insensitive)");
}

TEST(ConfigServerNames, LowercasedWithWildcard) {
    std::string text(kMinimal);
    text.replace(text.find("\"www.example.test\""), 18, R"("WWW.Example.TEST", "*.Example.test")");
    const Config config = parse_config(text, "cloister.toml");

    ASSERT_EQ(config.vhosts[0].server_names.size(), 2U);
    EXPECT_EQ(config.vhosts[0].server_names[0], "www.example.test");
    EXPECT_EQ(config.vhosts[0].server_names[1], "*.example.test");
    EXPECT_EQ(config.vhosts[0].name, "www.example.test");
    EXPECT_EQ(config.vhosts[0].server_name_locations.at(1).column, 37U);
}

std::string server_name_error(std::string_view name) {
    std::string text(kMinimal);
    text.replace(text.find("\"www.example.test\""), 18, "\"" + std::string(name) + "\"");
    return error_of(text);
}

TEST(ConfigErrors, NonAsciiServerName) {
    EXPECT_EQ(server_name_error("bücher.example.test"),
              "cloister.toml:9:17: vhost[0].server-names[0]: \"bücher.example.test\" is not "
              "ASCII; write each label in its A-label form (xn--...)");
}

TEST(ConfigErrors, IpLiteralServerName) {
    const std::string tail =
        " is an IP address, and SNI carries only DNS names (RFC 6066 "
        "section 3); expected a DNS name such as \"www.example.test\" or a "
        "wildcard such as \"*.example.test\"";
    EXPECT_EQ(server_name_error("127.0.0.1"),
              "cloister.toml:9:17: vhost[0].server-names[0]: \"127.0.0.1\"" + tail);
    EXPECT_EQ(server_name_error("::1"),
              "cloister.toml:9:17: vhost[0].server-names[0]: \"::1\"" + tail);
    EXPECT_EQ(server_name_error("0x7f000001"),
              "cloister.toml:9:17: vhost[0].server-names[0]: \"0x7f000001\"" + tail);
}

TEST(ConfigErrors, InvalidServerNames) {
    const std::string tail =
        " is not a valid server name; expected a DNS name such as "
        "\"www.example.test\" or a wildcard such as \"*.example.test\", "
        "with labels of 1 to 63 letters, digits and hyphens and at most "
        "253 bytes in all";
    const std::string long_label(64, 'a');
    std::string long_name;
    for (int i = 0; i < 4; ++i) {
        long_name += std::string(63, 'b') + ".";
    }
    long_name += "test";  // 4 * 64 + 4 = 260 bytes
    for (const std::string& name :
         {std::string(""), std::string("-a.example.test"), std::string("a..example.test"),
          std::string("*.*.example.test"), std::string("a*.example.test"), std::string("*"),
          std::string("a_b.example.test"), std::string("www.example.test."), long_label + ".test",
          long_name}) {
        EXPECT_EQ(server_name_error(name),
                  "cloister.toml:9:17: vhost[0].server-names[0]: \"" + name + "\"" + tail);
    }
}

TEST(ConfigErrors, ServerNameNotString) {
    std::string text(kMinimal);
    text.replace(text.find("\"www.example.test\""), 18, "1");
    EXPECT_EQ(error_of(text),
              "cloister.toml:9:17: vhost[0].server-names[0]: expected a server name string, "
              "got 1");
}

TEST(ConfigVhosts, NamelessVhostIsDefault) {
    std::string text(kMinimal);
    text.erase(text.find("server-names"), text.find("backend") - text.find("server-names"));
    const Config config = parse_config(text, "cloister.toml");

    EXPECT_TRUE(config.vhosts[0].server_names.empty());
    EXPECT_EQ(config.vhosts[0].name, "vhost[0]");
    EXPECT_TRUE(config.vhosts[0].is_default);
}

TEST(ConfigErrors, NamelessVhostNotDefault) {
    std::string text = with(kSecondVhost);
    text.replace(text.find("server-names = [\"api.example.test\"]"), 35, "server-names = []");
    text.replace(text.find("default = true"), 14, "");
    EXPECT_EQ(error_of(text),
              "cloister.toml:17:16: vhost[1].server-names: missing or empty, but only the "
              "default vhost (here vhost[0]) can serve clients whose SNI matches no name; "
              "expected at least one server name");
}

TEST(ConfigErrors, TomlSyntax) {
    EXPECT_EQ(error_of("[server\nlog-level = \"info\"\n"),
              "cloister.toml:1:8: invalid TOML: Error while parsing table header: expected "
              "']', saw '\\n'");
    EXPECT_EQ(error_of(with("[[listener]]\naddress = \"a\"\naddress = \"b\"\n")),
              "cloister.toml:17:11: invalid TOML: Error while parsing key-value pair: cannot "
              "redefine existing string 'address'");
}

TEST(ConfigListeners, DuplicateAddress) {
    EXPECT_EQ(error_of(with("[[listener]]\naddress = \"127.0.0.1:8443\"\n")),
              "cloister.toml:16:11: listener[1].address: \"127.0.0.1:8443\" is the same "
              "address as listener[0] at cloister.toml:2:11; expected distinct addresses");
    EXPECT_EQ(error_of(with("[[listener]]\naddress = \"[::1]:9\"\n"
                            "[[listener]]\naddress = \"[0:0::1]:9\"\n")),
              "cloister.toml:18:11: listener[2].address: \"[0:0::1]:9\" is the same address "
              "as listener[1] at cloister.toml:16:11; expected distinct addresses");
}

TEST(ConfigListeners, SamePortOnBothFamilies) {
    const Config config = parse_config(with("[[listener]]\naddress = \"[::]:8443\"\n"
                                            "[[listener]]\naddress = \"127.0.0.1:8444\"\n"
                                            "[[listener]]\naddress = \"unix:/run/c.sock\"\n"),
                                       "cloister.toml");
    EXPECT_EQ(config.listeners.size(), 4U);
}

TEST(ConfigErrors, BackendAddress) {
    std::string text(kMinimal);
    text.replace(text.find("127.0.0.1:8080"), 14, "localhost");
    EXPECT_EQ(error_of(text),
              "cloister.toml:10:11: vhost[0].backend: invalid address \"localhost\": the port "
              "is missing; expected \"IPV4:PORT\", \"[IPV6]:PORT\", \"HOSTNAME:PORT\" or "
              "\"unix:/ABSOLUTE/PATH\"");
}

TEST(SocketAddressParse, AcceptedForms) {
    const SocketAddress v4 = SocketAddress::parse("127.0.0.1:8443");
    EXPECT_EQ(v4.kind, SocketAddress::Kind::tcp);
    EXPECT_EQ(v4.host, "127.0.0.1");
    EXPECT_EQ(v4.port, 8443);
    EXPECT_EQ(v4.text, "127.0.0.1:8443");

    const SocketAddress v6 = SocketAddress::parse("[::1]:1");
    EXPECT_EQ(v6.host, "::1");
    EXPECT_EQ(v6.port, 1);

    const SocketAddress name = SocketAddress::parse("backend-1.internal:65535");
    EXPECT_EQ(name.host, "backend-1.internal");
    EXPECT_EQ(name.port, 65535);

    const SocketAddress unix_socket = SocketAddress::parse("unix:/run/app.sock");
    EXPECT_EQ(unix_socket.kind, SocketAddress::Kind::unix_socket);
    EXPECT_EQ(unix_socket.path, "/run/app.sock");
    EXPECT_EQ(unix_socket.port, 0);
    EXPECT_TRUE(unix_socket.host.empty());

    const std::string longest = "unix:/" + std::string(106, 'p');
    EXPECT_EQ(SocketAddress::parse(longest).path.size(), 107U);
}

TEST(SocketAddressParse, RejectedForms) {
    const std::string forms =
        "; expected \"IPV4:PORT\", \"[IPV6]:PORT\", \"HOSTNAME:PORT\" or "
        "\"unix:/ABSOLUTE/PATH\"";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"127.0.0.1", "the port is missing"},
        {"127.0.0.1:", "the port is missing"},
        {"127.0.0.1:0", "port 0 is out of range 1 to 65535"},
        {"127.0.0.1:65536", "port 65536 is out of range 1 to 65535"},
        {"127.0.0.1:http", "the port \"http\" is not a number"},
        {"127.0.0.1:+80", "the port \"+80\" is not a number"},
        {"127.0.0.1:123456", "the port \"123456\" is not a number"},
        {":8080", "the host is empty; write 0.0.0.0 or [::] for all addresses"},
        {"::1:8080", "an IPv6 address needs brackets, as in [::1]:8443"},
        {"[::1:8080", "the closing ']' is missing"},
        {"[::1]8080", "the port is missing after ']'"},
        {"[::1]", "the port is missing after ']'"},
        {"[127.0.0.1]:80", "\"127.0.0.1\" is not an IPv6 address"},
        {"[fe80::1%eth0]:80", "\"fe80::1%eth0\" is not an IPv6 address"},
        {"256.0.0.1:80", "the host \"256.0.0.1\" is not an IPv4 address or a host name"},
        {"bad_host:80", "the host \"bad_host\" is not an IPv4 address or a host name"},
        {"unix:run/app.sock", "the socket path \"run/app.sock\" is not absolute"},
        {"unix:", "the socket path \"\" is not absolute"},
        {"unix:/" + std::string(107, 'p'),
         "the socket path is 108 bytes long, and sun_path holds at most 107"},
        {std::string("unix:/a\0b", 9), "the socket path contains a NUL byte"},
    };
    for (const auto& [text, problem] : cases) {
        std::string escaped = text;
        if (const auto nul = escaped.find('\0'); nul != std::string::npos) {
            escaped.replace(nul, 1, "\\u0000");
        }
        EXPECT_EQ(address_error_of(text), "invalid address \"" + escaped + "\": " + problem + forms)
            << text;
    }
}

TEST(ConfigPaths, ResolveAgainstSourceDirectory) {
    std::string text = with(
        "[[key]]\nname = \"abs\"\nfile = \"/srv/keys/abs.key\"\n"
        "passphrase-file = \"../secret/abs.pass\"\n");
    const Config config = parse_config(text, "/etc/cloister/cloister.toml");

    EXPECT_EQ(config.keys[0].file, std::filesystem::path("/etc/cloister/keys/rsa.key"));
    EXPECT_EQ(config.keys[1].file, std::filesystem::path("/srv/keys/abs.key"));
    EXPECT_EQ(config.keys[1].passphrase_file, std::filesystem::path("/etc/secret/abs.pass"));
    EXPECT_EQ(config.vhosts[0].certificates[0].chain,
              std::filesystem::path("/etc/cloister/certs/rsa.pem"));
}

TEST(ConfigPaths, RelativeSourceName) {
    const std::filesystem::path cwd = std::filesystem::current_path();

    const Config bare = parse_config(kMinimal, "cloister.toml");
    EXPECT_EQ(bare.keys[0].file, (cwd / "keys/rsa.key").lexically_normal());
    EXPECT_EQ(bare.source, (cwd / "cloister.toml").lexically_normal());

    const Config nested = parse_config(kMinimal, "conf/cloister.toml");
    EXPECT_EQ(nested.keys[0].file, (cwd / "conf/keys/rsa.key").lexically_normal());
}

TEST(ConfigLoad, ReadsFileAndResolvesPaths) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "cloister-config-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    const std::filesystem::path dir(pattern);
    const std::filesystem::path file = dir / "cloister.toml";
    {
        std::ofstream out(file);
        out << kMinimal;
    }
    const Config config = load_config(file);
    std::filesystem::remove_all(dir);

    EXPECT_EQ(config.source, file);
    EXPECT_EQ(config.keys[0].file, dir / "keys/rsa.key");
}

TEST(ConfigLoad, ErrorsNameTheFile) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "cloister-config-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    const std::filesystem::path file = std::filesystem::path(pattern) / "bad.toml";
    {
        std::ofstream out(file);
        out << with("[limits]\nspare-children = \"four\"\n");
    }
    std::string message;
    try {
        static_cast<void>(load_config(file));
    } catch (const Error& error) {
        message = error.what();
    }
    std::filesystem::remove_all(pattern);

    EXPECT_EQ(message, file.string() +
                           ":16:18: limits.spare-children: expected an integer from 0 to 1024, "
                           "got \"four\"");
}

TEST(ConfigLoad, MissingFile) {
    try {
        static_cast<void>(load_config("/nonexistent/cloister.toml"));
        ADD_FAILURE() << "load_config accepted a missing file";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        EXPECT_STREQ(error.what(),
                     "/nonexistent/cloister.toml: failed to open the config file: No such file "
                     "or directory");
    }
}

// Returns the message of the config error that load_config throws for path, or "" when it
// loads.
std::string load_error_of(const std::filesystem::path& path) {
    try {
        static_cast<void>(load_config(path));
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        return error.what();
    }
    return {};
}

TEST(ConfigLoad, DirectoryRejected) {
    EXPECT_EQ(load_error_of("/"), "/: the config file is not a regular file; expected a TOML file");
}

// A FIFO with a writer that never closes it blocked start-up forever before the type check.
TEST(ConfigLoad, FifoRejectedWithoutBlocking) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "cloister-config-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    const std::filesystem::path fifo = std::filesystem::path(pattern) / "cloister.toml";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    Fd writer(::open(fifo.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
    ASSERT_TRUE(writer);
    ASSERT_EQ(::write(writer.get(), "# comment\n", 10), 10);

    auto loading = std::async(std::launch::async, [&fifo] { return load_error_of(fifo); });
    const bool finished = loading.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    writer.reset();  // ends a read that blocked, so that the test fails instead of hanging
    const std::string message = loading.get();
    std::filesystem::remove_all(pattern);

    EXPECT_TRUE(finished) << "load_config blocked on a FIFO";
    EXPECT_EQ(message,
              fifo.string() + ": the config file is not a regular file; expected a TOML file");
}

TEST(ConfigLoad, OversizedFileRejected) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "cloister-config-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    const std::filesystem::path file = std::filesystem::path(pattern) / "cloister.toml";
    {
        std::ofstream out(file);
        out << kMinimal << '#' << std::string(4 * 1024 * 1024, 'x') << '\n';
    }
    const std::string message = load_error_of(file);
    std::filesystem::remove_all(pattern);

    EXPECT_EQ(message, file.string() + ": the config file has " +
                           std::to_string(kMinimal.size() + 4 * 1024 * 1024 + 2) +
                           " bytes, more than the maximum of 4194304");
}

TEST(SourceLocationFormat, FileLineColumn) {
    const SourceLocation where{"cloister.toml", 12, 19};
    EXPECT_EQ(where.to_string(), "cloister.toml:12:19");
}

// --- keys in PKCS#11 tokens ----------------------------------------------------------------

// kMinimal plus a second [[key]] named "token" (from line 16) with the given lines.
std::string with_token_key(std::string_view lines) {
    return with("\n[[key]]\nname = \"token\"\n" + std::string(lines));
}

TEST(ConfigTokenKey, ReadsUriModuleAndPinFile) {
    const Config config = parse_config(
        with_token_key("uri = \"pkcs11:token=web;object=www;type=private\"\n"
                       "module = \"/usr/lib/softhsm/libsofthsm2.so\"\npin-file = \"pin\"\n"),
        "/etc/cloister/cloister.toml");
    ASSERT_EQ(config.keys.size(), 2U);
    const KeyConfig& key = config.keys[1];
    EXPECT_TRUE(key.in_token());
    EXPECT_FALSE(config.keys[0].in_token());
    EXPECT_EQ(key.uri, "pkcs11:token=web;object=www;type=private");
    EXPECT_EQ(key.module, "/usr/lib/softhsm/libsofthsm2.so");
    EXPECT_EQ(key.pin_file, std::filesystem::path("/etc/cloister/pin"));
    EXPECT_TRUE(key.file.empty());
}

TEST(ConfigTokenKey, ModuleFromKeyProcessOrUri) {
    const Config global = parse_config(
        with_token_key("uri = \"pkcs11:object=www\"\npin-file = \"/p\"\n"
                       "[key-process]\npkcs11-module = \"/lib/global.so\"\n"),
        "/etc/cloister/cloister.toml");
    EXPECT_EQ(global.key_process.pkcs11_module, std::filesystem::path("/lib/global.so"));
    EXPECT_EQ(global.keys[1].module, "/lib/global.so");

    const Config from_uri = parse_config(
        with_token_key("uri = \"pkcs11:object=www?module-path=/lib/uri.so\"\n"
                       "pin-file = \"/p\"\n[key-process]\npkcs11-module = \"/lib/global.so\"\n"),
        "/etc/cloister/cloister.toml");
    EXPECT_EQ(from_uri.keys[1].module, "/lib/uri.so");
}

TEST(ConfigTokenKey, PinSourceAndPinValueFromUri) {
    const Config source = parse_config(
        with_token_key("uri = \"pkcs11:object=www?pin-source=file:secrets/pin\"\n"
                       "module = \"/m.so\"\n"),
        "/etc/cloister/cloister.toml");
    EXPECT_EQ(source.keys[1].pin_file, std::filesystem::path("/etc/cloister/secrets/pin"));

    const Config value = parse_config(
        with_token_key("uri = \"pkcs11:object=www?pin-value=1234\"\nmodule = \"/m.so\"\n"),
        "cloister.toml");
    EXPECT_FALSE(value.keys[1].pin_file);
    EXPECT_EQ(value.keys[1].uri, "pkcs11:object=www?pin-value=1234");
}

TEST(ConfigTokenKey, RejectsFileWithUri) {
    EXPECT_EQ(error_of(with_token_key("file = \"k.pem\"\nuri = \"pkcs11:object=a\"\n")),
              "cloister.toml:19:7: key[1].uri: file and uri are both set; expected file for a "
              "key file or uri for a key in a PKCS#11 token");
}

TEST(ConfigTokenKey, RejectsKeysOfTheOtherKind) {
    EXPECT_EQ(error_of(with_token_key("file = \"k.pem\"\npin-file = \"pin\"\n")),
              "cloister.toml:19:12: key[1].pin-file: applies only to a key with a uri");
    EXPECT_EQ(error_of(with_token_key("uri = \"pkcs11:object=a?pin-value=1\"\nmodule = "
                                      "\"/m.so\"\npassphrase-file = \"p\"\n")),
              "cloister.toml:20:19: key[1].passphrase-file: applies only to a key file; a key "
              "with a uri takes pin-file");
}

TEST(ConfigTokenKey, RequiresModuleAndPin) {
    EXPECT_EQ(error_of(with_token_key("uri = \"pkcs11:object=a\"\npin-file = \"/p\"\n")),
              "cloister.toml:16:1: key[1].module is missing; expected the path of the PKCS#11 "
              "module (.so) that serves the token, here or as [key-process] pkcs11-module");
    EXPECT_EQ(error_of(with_token_key("uri = \"pkcs11:object=a\"\nmodule = \"/m.so\"\n")),
              "cloister.toml:16:1: key[1].pin-file is missing; expected a file with the token's "
              "user PIN (mode 0600), or pin-value or pin-source in the URI query");
}

TEST(ConfigTokenKey, RejectsTwoPinSources) {
    const std::string message = error_of(with_token_key(
        "uri = \"pkcs11:object=a?pin-value=4321\"\nmodule = \"/m.so\"\npin-file = \"/p\"\n"));
    EXPECT_NE(message.find("key[1].pin-file: the PIN is given more than once"), std::string::npos)
        << message;
    EXPECT_EQ(message.find("4321"), std::string::npos) << message;
}

TEST(ConfigTokenKey, RejectsPinValueInPathWithoutEchoingIt) {
    const std::string message = error_of(
        with_token_key("uri = \"pkcs11:token=web;pin-value=s3cr3t\"\nmodule = \"/m.so\"\n"));
    EXPECT_NE(message.find("cloister.toml:18:7: key[1].uri: invalid PKCS#11 URI: pin-value is in "
                           "the path part"),
              std::string::npos)
        << message;
    EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
}

TEST(ConfigTokenKey, RejectsCommandPinSourceAndModuleName) {
    EXPECT_NE(error_of(with_token_key("uri = \"pkcs11:object=a?pin-source=|cat%20/p\"\n"
                                      "module = \"/m.so\"\n"))
                  .find("pin-source starts with '|'"),
              std::string::npos);
    EXPECT_NE(error_of(with_token_key("uri = \"pkcs11:object=a?pin-source=env:PIN\"\n"
                                      "module = \"/m.so\"\n"))
                  .find("pin-source must be a file path or a file: URI"),
              std::string::npos);
    EXPECT_NE(error_of(with_token_key("uri = \"pkcs11:object=a?module-name=softhsm2&"
                                      "pin-value=1\"\n"))
                  .find("module-name is not supported"),
              std::string::npos);
}

TEST(ConfigTokenKey, RejectsConflictingModules) {
    EXPECT_NE(error_of(with_token_key("uri = \"pkcs11:object=a?module-path=/a.so&pin-value=1\"\n"
                                      "module = \"/b.so\"\n"))
                  .find("key[1].module: the URI's module-path names another module"),
              std::string::npos);
}

TEST(ConfigTokenKey, RejectsNonStringUri) {
    EXPECT_EQ(error_of(with_token_key("uri = 5\n")),
              "cloister.toml:18:7: key[1].uri: expected a PKCS#11 URI string, got 5");
}

TEST(ConfigSandbox, DefaultsWithoutTable) {
    const Config config = parse_config(kMinimal, "cloister.toml");
    EXPECT_EQ(config.sandbox.network_user, "cloister-net");
    EXPECT_EQ(config.sandbox.key_user, "cloister-key");
    EXPECT_EQ(config.sandbox.root_directory, std::filesystem::path("/var/lib/cloister/empty"));
    EXPECT_EQ(config.sandbox.seccomp, SeccompSetting::enforce);
    EXPECT_TRUE(config.sandbox.namespaces);
    EXPECT_EQ(config.sandbox.connection_network, ConnectionNetwork::host);
    EXPECT_EQ(config.sandbox.spawn, SpawnMode::fork);
    EXPECT_TRUE(config.sandbox.where.file.empty());
}

TEST(ConfigSandbox, ReadsEveryKey) {
    const Config config = parse_config(with(R"([sandbox]
network-user = "proxy-net"
key-user = "proxy.key_1"
root-directory = "jail"
seccomp = "log"
namespaces = false
connection-network = "none"
spawn = "exec"
)"),
                                       "/etc/cloister/cloister.toml");
    EXPECT_EQ(config.sandbox.network_user, "proxy-net");
    EXPECT_EQ(config.sandbox.key_user, "proxy.key_1");
    EXPECT_EQ(config.sandbox.root_directory, std::filesystem::path("/etc/cloister/jail"));
    EXPECT_EQ(config.sandbox.seccomp, SeccompSetting::log);
    EXPECT_FALSE(config.sandbox.namespaces);
    EXPECT_EQ(config.sandbox.connection_network, ConnectionNetwork::none);
    EXPECT_EQ(config.sandbox.spawn, SpawnMode::exec);
    EXPECT_EQ(config.sandbox.where.to_string(), "/etc/cloister/cloister.toml:15:1");
    const Config off = parse_config(with("[sandbox]\nseccomp = \"off\"\n"), "cloister.toml");
    EXPECT_EQ(off.sandbox.seccomp, SeccompSetting::off);
}

TEST(ConfigSandbox, RejectsSameUserForBothRoles) {
    EXPECT_EQ(error_of(with("[sandbox]\nnetwork-user = \"proxy\"\nkey-user = \"proxy\"\n")),
              "cloister.toml:17:12: sandbox.key-user: network-user and key-user are both "
              "\"proxy\"; expected two different users, so that a connection process cannot "
              "signal or ptrace the key process");
    EXPECT_EQ(error_of(with("[sandbox]\nnetwork-user = \"cloister-key\"\n")),
              "cloister.toml:16:16: sandbox.network-user: network-user and key-user are both "
              "\"cloister-key\"; expected two different users, so that a connection process "
              "cannot signal or ptrace the key process");
}

TEST(ConfigSandbox, RejectsInvalidValues) {
    const std::string user_form =
        "expected a user name of 1 to 32 letters, digits, '.', '_' or '-', not starting with '-'";
    EXPECT_EQ(error_of(with("[sandbox]\nnetwork-user = \"-net\"\n")),
              "cloister.toml:16:16: sandbox.network-user: " + user_form + ", got \"-net\"");
    EXPECT_EQ(error_of(with("[sandbox]\nkey-user = \"key/1\"\n")),
              "cloister.toml:16:12: sandbox.key-user: " + user_form + ", got \"key/1\"");
    EXPECT_EQ(error_of(with("[sandbox]\nkey-user = \"" + std::string(33, 'k') + "\"\n")),
              "cloister.toml:16:12: sandbox.key-user: " + user_form + ", got \"" +
                  std::string(33, 'k') + "\"");
    EXPECT_EQ(error_of(with("[sandbox]\nseccomp = \"kill\"\n")),
              "cloister.toml:16:11: sandbox.seccomp: expected \"enforce\", \"log\" or \"off\", "
              "got \"kill\"");
    EXPECT_EQ(error_of(with("[sandbox]\nnamespaces = \"yes\"\n")),
              "cloister.toml:16:14: sandbox.namespaces: expected true or false, got \"yes\"");
    EXPECT_EQ(error_of(with("[sandbox]\nconnection-network = \"off\"\n")),
              "cloister.toml:16:22: sandbox.connection-network: expected \"host\" or \"none\", "
              "got \"off\"");
    EXPECT_EQ(error_of(with("[sandbox]\nspawn = \"clone\"\n")),
              "cloister.toml:16:9: sandbox.spawn: expected \"fork\" or \"exec\", got \"clone\"");
    EXPECT_EQ(error_of(with("[sandbox]\nchroot = \"/x\"\n")),
              "cloister.toml:16:1: unknown key 'chroot' in [sandbox]; expected one of: "
              "network-user, key-user, root-directory, seccomp, namespaces, connection-uids, "
              "connection-network, spawn");
}

TEST(ConfigSandbox, ConnectionUidsOffByDefault) {
    EXPECT_FALSE(parse_config(with(""), "cloister.toml").sandbox.connection_uids.has_value());
    EXPECT_FALSE(parse_config(with("[sandbox]\nseccomp = \"log\"\n"), "cloister.toml")
                     .sandbox.connection_uids.has_value());
}

TEST(ConfigSandbox, ReadsConnectionUids) {
    const Config config =
        parse_config(with("[sandbox]\nconnection-uids = \"2000000-2065535\"\n"), "cloister.toml");
    ASSERT_TRUE(config.sandbox.connection_uids.has_value());
    EXPECT_EQ(config.sandbox.connection_uids->first, 2'000'000U);
    EXPECT_EQ(config.sandbox.connection_uids->count, 65'536U);
}

TEST(ConfigSandbox, RejectsMalformedConnectionUids) {
    const std::string form =
        "sandbox.connection-uids: expected a uid range \"FIRST-LAST\" of two decimal ids with "
        "FIRST <= LAST <= 4294967294, such as \"2000000-2065535\"";
    EXPECT_EQ(error_of(with("[sandbox]\nconnection-uids = \"2065535-2000000\"\n")),
              "cloister.toml:16:19: " + form + ", got \"2065535-2000000\"");
    EXPECT_EQ(error_of(with("[sandbox]\nconnection-uids = \"2000000\"\n")),
              "cloister.toml:16:19: " + form + ", got \"2000000\"");
    EXPECT_EQ(error_of(with("[sandbox]\nconnection-uids = 2000000\n")),
              "cloister.toml:16:19: sandbox.connection-uids: expected a uid range "
              "\"FIRST-LAST\", got 2000000");
}

TEST(ConfigSandbox, RejectsConnectionUidsWithRoot) {
    EXPECT_EQ(error_of(with("[sandbox]\nconnection-uids = \"0-70000\"\n")),
              "cloister.toml:16:19: sandbox.connection-uids: the range 0-70000 contains uid 0 "
              "(root); start it above every system account, such as \"2000000-2065535\"");
}

TEST(ConfigSandbox, RejectsConnectionUidsBelowLimits) {
    const std::string limits = "[limits]\nmax-connections = 2\nspare-children = 1\n";
    EXPECT_NO_THROW(static_cast<void>(parse_config(
        with(limits + "[sandbox]\nconnection-uids = \"3000000-3000002\"\n"), "cloister.toml")));
    EXPECT_EQ(error_of(with(limits + "[sandbox]\nconnection-uids = \"3000000-3000001\"\n")),
              "cloister.toml:19:19: sandbox.connection-uids: the range 3000000-3000001 has 2 ids, "
              "fewer than max-connections (2) + spare-children (1) = 3; widen the range or lower "
              "[limits] max-connections");
}

}  // namespace
}  // namespace cloister
