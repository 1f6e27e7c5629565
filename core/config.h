// The configuration model and the TOML loader.
//
// The loader validates syntax and meaning (types, ranges, references between sections,
// duplicate names). Files named by the config (certificates, keys) are read later by the
// TLS stack and the key process, which report their own errors with the same locations.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/uid_pool.h"

namespace cloister {

// The place a value was written, printed as "file:line:column".
struct SourceLocation {
    std::string file;
    std::uint32_t line = 0;
    std::uint32_t column = 0;

    [[nodiscard]] std::string to_string() const;
};

// A socket address as written in the config, parsed.
//   "127.0.0.1:8443", "[::1]:8443", "[::]:443", "localhost:8080" (TCP; host names are
//   resolved when the socket is opened), or "unix:/run/app.sock".
struct SocketAddress {
    enum class Kind { tcp, unix_socket };
    Kind kind = Kind::tcp;
    std::string host;        // without brackets; empty for unix_socket
    std::uint16_t port = 0;  // 0 for unix_socket
    std::string path;        // for unix_socket
    std::string text;        // the original text, for messages

    // Parses text; throws Error(config) with a message naming the expected forms.
    static SocketAddress parse(const std::string& text);
};

struct ListenerConfig {
    SocketAddress address;
    SourceLocation where;
};

enum class TlsVersion { tls1_2, tls1_3 };

// The handling of a client with no SNI, or with a name that no vhost serves.
enum class SniMismatch {
    use_default,  // the default vhost serves it
    reject,       // the handshake fails with alert unrecognized_name (112)
};

// The handling of a client that offers ALPN protocols when its vhost lists `alpn` but the two
// lists share no protocol.
enum class AlpnMismatch {
    continue_without_alpn,  // the handshake goes on and no protocol is agreed
    reject,  // the handshake fails with alert no_application_protocol (120, RFC 7301 section 3.2)
};

struct TlsConfig {
    TlsVersion min_version = TlsVersion::tls1_2;
    TlsVersion max_version = TlsVersion::tls1_3;
    // TLS 1.3 suites, OpenSSL syntax ("TLS_AES_128_GCM_SHA256:...").
    std::string ciphersuites =
        "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
    // TLS 1.2 cipher list, OpenSSL syntax. RSA key exchange is removed unless
    // rsa_key_exchange is set.
    std::string ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20";
    // Keeps the TLS 1.2 RSA key exchange suites that `ciphers` lists. They lack forward
    // secrecy, and the key process then decrypts premaster secrets (with implicit rejection).
    bool rsa_key_exchange = false;
    // Key exchange groups, OpenSSL syntax.
    std::string groups = "X25519:P-256:P-384";
    bool prefer_server_ciphers = true;
    // Names no vhost serves (unknown names and IP literals in SNI).
    SniMismatch unknown_sni = SniMismatch::use_default;
    // Clients that send no SNI at all.
    SniMismatch missing_sni = SniMismatch::use_default;
    // Clients whose ALPN protocols share none with their vhost's `alpn` list.
    AlpnMismatch alpn_mismatch = AlpnMismatch::continue_without_alpn;
};

struct LimitsConfig {
    unsigned spare_children = 4;
    unsigned max_connections = 1024;
    std::chrono::milliseconds handshake_timeout{10'000};
    std::chrono::milliseconds idle_timeout{300'000};
    std::chrono::milliseconds drain_timeout{30'000};
    std::chrono::milliseconds backend_connect_timeout{5'000};
    std::chrono::milliseconds key_operation_timeout{5'000};
    std::size_t buffer_size = 16384;  // bytes per direction in the proxy loop
};

struct KeyProcessConfig {
    unsigned workers = 0;  // 0: one per online CPU
    // Private-key operations one connection process may request on its channel.
    unsigned max_operations_per_channel = 1;
    // The PKCS#11 module for [[key]] tables with a uri that name none (`pkcs11-module`).
    std::optional<std::filesystem::path> pkcs11_module;
    // Period of the key operation stats lines (`stats-interval`); 0 turns them off.
    std::chrono::seconds stats_interval{60};
};

// A private key held by the key process. Index in Config::keys is the key index on the
// key channel.
struct KeyConfig {
    std::string name;
    std::filesystem::path file;                            // PEM or PKCS#8; empty with uri
    std::optional<std::filesystem::path> passphrase_file;  // for encrypted PKCS#8
    // A key in a PKCS#11 token instead of a file: the RFC 7512 URI as written, which may hold
    // a pin-value in its query. The loader validates it with pkcs11::parse_uri.
    std::string uri;
    std::filesystem::path module;  // the PKCS#11 module for uri; empty without uri
    // The token's PIN file for uri: `pin-file`, or the URI's pin-source. Empty when the URI
    // contains a pin-value. The key process reads it; the loader does not open it.
    std::optional<std::filesystem::path> pin_file;
    SourceLocation where;

    [[nodiscard]] bool in_token() const { return !uri.empty(); }
};

struct CertificateConfig {
    std::filesystem::path chain;  // PEM: leaf first, then intermediates
    std::string key_name;
    std::size_t key_index = 0;  // index into Config::keys
    SourceLocation where;
};

struct VhostConfig {
    std::string name;                       // for logs: the first server name, or "vhost[N]"
    std::vector<std::string> server_names;  // lowercase; "*.example.test" for a wildcard
    // Source locations of server_names, in the same order. Empty when the vhost was not read
    // from a file.
    std::vector<SourceLocation> server_name_locations;
    // True for the default vhost: the one with `default = true`, or the first [[vhost]] when
    // none sets it. The SNI policies in TlsConfig send clients to it.
    bool is_default = false;
    bool default_explicit = false;  // `default = true` was written in the config
    std::vector<CertificateConfig> certificates;
    // ALPN protocol names (RFC 7301), 1 to 255 bytes each, in the server's order of
    // preference. Empty: the server agrees on no protocol and ignores the client's list.
    std::vector<std::string> alpn;
    SocketAddress backend;
    SourceLocation where;
};

enum class LogLevel { debug, info, warning, error };

struct ServerConfig {
    std::string tls_backend = "openssl";  // "openssl" or "botan"
    LogLevel log_level = LogLevel::info;
};

// The action a seccomp filter takes on a system call outside its allow-list.
enum class SeccompSetting {
    enforce,  // the process dies with SIGSYS
    log,      // the call is allowed, and the kernel logs it (audit record type 1326)
    off,      // no filter is installed
};

// The network namespace of the connection processes.
enum class ConnectionNetwork {
    host,  // the host's: a connection process connects to TCP backends itself
    none,  // one shared empty namespace: the supervisor connects every backend for it
};

// The way the supervisor starts a connection process.
enum class SpawnMode {
    fork,  // fork(): the process starts as a copy of the supervisor
    exec,  // fork() and fexecve() of the supervisor's own binary: a fresh address space
};

// [sandbox]: how the key process and the connection processes are confined. The users and
// the chroot apply only when the daemon starts as root; docs/sandboxing.md lists every layer.
struct SandboxConfig {
    std::string network_user = "cloister-net";  // runs the connection processes
    std::string key_user = "cloister-key";      // runs the key process
    // An empty directory owned by root that neither user can write; created at start when
    // missing.
    std::filesystem::path root_directory = "/var/lib/cloister/empty";
    SeccompSetting seccomp = SeccompSetting::enforce;
    bool namespaces = true;  // new PID and IPC namespaces, and a network one for memory keys
    // The ids that connection processes run as, one per live process; unset: all run as
    // network_user.
    std::optional<UidRange> connection_uids;
    ConnectionNetwork connection_network = ConnectionNetwork::host;
    SpawnMode spawn = SpawnMode::fork;
    SourceLocation where;  // the [sandbox] table, for errors found at start
};

struct Config {
    std::filesystem::path source;  // the config file, absolute
    ServerConfig server;
    std::vector<ListenerConfig> listeners;
    TlsConfig tls;
    LimitsConfig limits;
    KeyProcessConfig key_process;
    std::vector<KeyConfig> keys;
    std::vector<VhostConfig> vhosts;
    SandboxConfig sandbox;
};

// Loads and validates the config at path. Throws Error(config) whose message starts with
// "file:line:column:" and names the key and its expected form. Relative paths in the file
// resolve against the file's directory. The checks include those of VhostTable (duplicate
// server names), so a config that loads also builds a VhostTable.
Config load_config(const std::filesystem::path& path);

// Parses config text; source names it in messages, and relative paths resolve against the
// directory part of source (the current directory when source has none).
Config parse_config(std::string_view text, const std::string& source);

}  // namespace cloister
