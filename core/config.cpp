#include "core/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <system_error>
#include <utility>

#include "core/fd.h"
#include "core/vhost_table.h"
#include "pkcs11/uri.h"

namespace cloister {

std::string SourceLocation::to_string() const {
    return fmt::format("{}:{}:{}", file, line, column);
}

namespace {

constexpr std::string_view kAddressForms =
    R"("IPV4:PORT", "[IPV6]:PORT", "HOSTNAME:PORT" or "unix:/ABSOLUTE/PATH")";
// sun_path has room for the path and its terminating NUL byte.
constexpr std::size_t kMaxUnixPathLength = sizeof(sockaddr_un::sun_path) - 1;
constexpr std::size_t kMaxNameLength = 253;
constexpr std::string_view kUnixPrefix = "unix:";
// Far above any real config: it bounds the memory that reading the config file takes.
constexpr std::uintmax_t kMaxConfigFileSize = 4 * 1024 * 1024;

bool is_control(char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte < 0x20 || byte == 0x7f;
}

bool is_digits(std::string_view text) {
    return !text.empty() &&
           std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Escapes quotes, backslashes and control bytes as TOML does, so that a message shows what
// was written and cannot break a log line.
std::string escape(std::string_view text) {
    std::string out;
    for (const char c : text) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (is_control(c)) {
            out += fmt::format("\\u{:04X}", static_cast<unsigned char>(c));
        } else {
            out += c;
        }
    }
    return out;
}

std::string quote(std::string_view text) {
    return "\"" + escape(text) + "\"";
}

// Describes a TOML value for the "got ..." part of a message.
std::string describe(const toml::node& node) {
    switch (node.type()) {
        case toml::node_type::string:
            return quote(node.as_string()->get());
        case toml::node_type::integer:
            return std::to_string(node.as_integer()->get());
        case toml::node_type::floating_point:
            return fmt::format("{}", node.as_floating_point()->get());
        case toml::node_type::boolean:
            return node.as_boolean()->get() ? "true" : "false";
        case toml::node_type::table:
            return "a table";
        case toml::node_type::array:
            return "an array";
        case toml::node_type::date:
            return "a date";
        case toml::node_type::time:
            return "a time";
        default:
            return "a date-time";
    }
}

// Formats milliseconds in the largest unit that divides them, as the config writes them.
std::string format_duration(std::int64_t ms) {
    constexpr std::array<std::pair<std::int64_t, std::string_view>, 3> units{
        {{3'600'000, "h"}, {60'000, "m"}, {1'000, "s"}}};
    if (ms == 0) {
        return "0s";
    }
    for (const auto& [factor, unit] : units) {
        if (ms % factor == 0) {
            return fmt::format("{}{}", ms / factor, unit);
        }
    }
    return fmt::format("{}ms", ms);
}

// Parses "<digits><unit>" with unit ms, s, m or h into milliseconds. Returns nullopt for
// any other form, and for more than 12 digits, so that the product fits in 64 bits.
std::optional<std::int64_t> parse_duration(std::string_view text) {
    const std::size_t digits = text.find_first_not_of("0123456789");
    if (digits == 0 || digits == std::string_view::npos || digits > 12) {
        return std::nullopt;
    }
    std::int64_t value = 0;
    std::from_chars(text.data(), text.data() + digits, value);
    const std::string_view unit = text.substr(digits);
    constexpr std::array<std::pair<std::string_view, std::int64_t>, 4> units{
        {{"ms", 1}, {"s", 1'000}, {"m", 60'000}, {"h", 3'600'000}}};
    for (const auto& [name, factor] : units) {
        if (unit == name) {
            return value * factor;
        }
    }
    return std::nullopt;
}

// Address parsing. Each function returns what is wrong with its input, or an empty string
// after filling address.

std::string parse_port(std::string_view text, SocketAddress& address) {
    if (text.empty()) {
        return "the port is missing";
    }
    if (text.size() > 5 || !is_digits(text)) {
        return fmt::format("the port {} is not a number", quote(text));
    }
    unsigned value = 0;
    std::from_chars(text.data(), text.data() + text.size(), value);
    if (value < 1 || value > 65535) {
        return fmt::format("port {} is out of range 1 to 65535", value);
    }
    address.port = static_cast<std::uint16_t>(value);
    return {};
}

std::string parse_unix_address(std::string_view path, SocketAddress& address) {
    if (path.empty() || path.front() != '/') {
        return fmt::format("the socket path {} is not absolute", quote(path));
    }
    if (path.find('\0') != std::string_view::npos) {
        return "the socket path contains a NUL byte";
    }
    if (path.size() > kMaxUnixPathLength) {
        return fmt::format("the socket path is {} bytes long, and sun_path holds at most {}",
                           path.size(), kMaxUnixPathLength);
    }
    address.kind = SocketAddress::Kind::unix_socket;
    address.path = std::string(path);
    return {};
}

bool is_host_name(std::string_view name) {
    if (name.empty() || name.size() > kMaxNameLength || is_ip_literal(name)) {
        return false;
    }
    std::size_t start = 0;
    while (true) {
        const std::size_t dot = name.find('.', start);
        if (!is_ldh_label(name.substr(start, dot - start))) {
            return false;
        }
        if (dot == std::string_view::npos) {
            return true;
        }
        start = dot + 1;
    }
}

bool is_address(int family, std::string_view text) {
    std::array<unsigned char, sizeof(in6_addr)> buffer{};
    return ::inet_pton(family, std::string(text).c_str(), buffer.data()) == 1;
}

std::string check_host(std::string_view host) {
    if (host.empty()) {
        return "the host is empty; write 0.0.0.0 or [::] for all addresses";
    }
    if (host.find(':') != std::string_view::npos) {
        return "an IPv6 address needs brackets, as in [::1]:8443";
    }
    if (is_ip_literal(host) ? is_address(AF_INET, host) : is_host_name(host)) {
        return {};
    }
    return fmt::format("the host {} is not an IPv4 address or a host name", quote(host));
}

std::string parse_bracketed_address(std::string_view text, SocketAddress& address) {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos) {
        return "the closing ']' is missing";
    }
    const std::string_view host = text.substr(1, close - 1);
    if (!is_address(AF_INET6, host)) {
        return fmt::format("{} is not an IPv6 address", quote(host));
    }
    if (close + 1 >= text.size() || text[close + 1] != ':') {
        return "the port is missing after ']'";
    }
    address.host = std::string(host);
    return parse_port(text.substr(close + 2), address);
}

std::string parse_host_and_port(std::string_view text, SocketAddress& address) {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
        return "the port is missing";
    }
    const std::string_view host = text.substr(0, colon);
    if (std::string problem = check_host(host); !problem.empty()) {
        return problem;
    }
    address.host = std::string(host);
    return parse_port(text.substr(colon + 1), address);
}

std::string parse_address(std::string_view text, SocketAddress& address) {
    address.text = std::string(text);
    if (text.starts_with(kUnixPrefix)) {
        return parse_unix_address(text.substr(kUnixPrefix.size()), address);
    }
    if (text.starts_with('[')) {
        return parse_bracketed_address(text, address);
    }
    return parse_host_and_port(text, address);
}

std::string address_error(std::string_view text, const std::string& problem) {
    return fmt::format("invalid address {}: {}; expected {}", quote(text), problem, kAddressForms);
}

// Returns what is wrong with a configured server name, or an empty string.
std::string server_name_problem(std::string_view name) {
    const std::string_view form = R"(expected a DNS name such as "www.example.test" or a )"
                                  R"(wildcard such as "*.example.test")";
    if (std::any_of(name.begin(), name.end(), [](char c) { return (c & 0x80) != 0; })) {
        return fmt::format("{} is not ASCII; write each label in its A-label form (xn--...)",
                           quote(name));
    }
    if (is_ip_literal(name)) {
        return fmt::format(
            "{} is an IP address, and SNI carries only DNS names (RFC 6066 "
            "section 3); {}",
            quote(name), form);
    }
    const bool wildcard = name.starts_with("*.");
    if (!is_host_name(wildcard ? name.substr(2) : name)) {
        return fmt::format(
            "{} is not a valid server name; {}, with labels of 1 to 63 "
            "letters, digits and hyphens and at most 253 bytes in all",
            quote(name), form);
    }
    return {};
}

// Per-parse settings: the source name used in messages and the directory that relative
// paths resolve against.
struct Context {
    std::string source;
    std::filesystem::path base_directory;

    [[nodiscard]] SourceLocation locate(const toml::source_region& region) const {
        return SourceLocation{source, region.begin.line, region.begin.column};
    }
};

[[noreturn]] void fail(const SourceLocation& where, const std::string& message) {
    throw Error(ErrorKind::config, where.to_string() + ": " + message);
}

template <typename T>
struct Choice {
    std::string_view name;
    T value;
};

// One TOML table being read: its dotted path for messages, and the keys it accepts. The
// constructor rejects any other key, so typos fail loudly.
class Section {
  public:
    Section(const Context& context, const toml::table& table, std::string path,
            std::string_view title, std::initializer_list<std::string_view> keys)
        : context_(&context), table_(&table), path_(std::move(path)) {
        reject_unknown_keys(title, keys);
    }

    [[nodiscard]] const Context& context() const { return *context_; }
    [[nodiscard]] const std::string& path() const { return path_; }
    [[nodiscard]] SourceLocation where() const { return context_->locate(table_->source()); }

    [[nodiscard]] const toml::node* find(std::string_view key) const { return table_->get(key); }

    // The location of key's value, or of this table when key is absent.
    [[nodiscard]] SourceLocation where(std::string_view key) const {
        const toml::node* node = find(key);
        return node != nullptr ? context_->locate(node->source()) : where();
    }

    [[nodiscard]] std::string key_path(std::string_view key) const {
        return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
    }

    // Throws "location: path.key: expected <expected>, got <value>".
    [[noreturn]] void fail_value(std::string_view key, std::string_view expected) const {
        fail(where(key),
             fmt::format("{}: expected {}, got {}", key_path(key), expected, describe(*find(key))));
    }

    [[noreturn]] void fail_key(std::string_view key, std::string_view message) const {
        fail(where(key), fmt::format("{}: {}", key_path(key), message));
    }

    [[noreturn]] void fail_missing(std::string_view key, std::string_view expected) const {
        fail(where(), fmt::format("{} is missing; expected {}", key_path(key), expected));
    }

    [[nodiscard]] std::optional<std::int64_t> integer(std::string_view key, std::int64_t min,
                                                      std::int64_t max) const;
    [[nodiscard]] std::optional<bool> boolean(std::string_view key) const;
    [[nodiscard]] std::optional<std::string> text(std::string_view key,
                                                  std::string_view expected) const;
    [[nodiscard]] std::optional<std::chrono::milliseconds> duration(
        std::string_view key, std::chrono::milliseconds min, std::chrono::milliseconds max) const;
    [[nodiscard]] std::optional<std::filesystem::path> file(std::string_view key) const;
    [[nodiscard]] std::optional<SocketAddress> address(std::string_view key) const;
    [[nodiscard]] const toml::array* array(std::string_view key) const;

    template <typename T, std::size_t N>
    [[nodiscard]] std::optional<T> choice(std::string_view key,
                                          const std::array<Choice<T>, N>& choices) const;

    [[nodiscard]] std::string required_text(std::string_view key, std::string_view expected) const;

    template <typename T>
    [[nodiscard]] T integer_or(std::string_view key, std::int64_t min, std::int64_t max,
                               T fallback) const {
        const auto value = integer(key, min, max);
        return value ? static_cast<T>(*value) : fallback;
    }

    // The sub-table key ("[key]"), if present.
    [[nodiscard]] std::optional<Section> table(std::string_view key,
                                               std::initializer_list<std::string_view> keys) const;
    // The elements of the array of tables key ("[[key]]"); empty when absent.
    [[nodiscard]] std::vector<Section> tables(std::string_view key,
                                              std::initializer_list<std::string_view> keys) const;

  private:
    void reject_unknown_keys(std::string_view title,
                             std::initializer_list<std::string_view> keys) const;

    const Context* context_;
    const toml::table* table_;
    std::string path_;
};

void Section::reject_unknown_keys(std::string_view title,
                                  std::initializer_list<std::string_view> keys) const {
    // toml::table iterates in key order, so the loop picks the unknown key written first.
    const toml::key* first = nullptr;
    for (const auto& [key, value] : *table_) {
        const bool known = std::find(keys.begin(), keys.end(), key.str()) != keys.end();
        if (!known && (first == nullptr || key.source().begin < first->source().begin)) {
            first = &key;
        }
    }
    if (first == nullptr) {
        return;
    }
    std::string expected;
    for (const std::string_view key : keys) {
        expected += expected.empty() ? "" : ", ";
        expected += key;
    }
    fail(context_->locate(first->source()), fmt::format("unknown key '{}' {}; expected one of: {}",
                                                        escape(first->str()), title, expected));
}

std::optional<std::int64_t> Section::integer(std::string_view key, std::int64_t min,
                                             std::int64_t max) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    const auto* value = node->as_integer();
    if (value == nullptr || value->get() < min || value->get() > max) {
        fail_value(key, fmt::format("an integer from {} to {}", min, max));
    }
    return value->get();
}

std::optional<bool> Section::boolean(std::string_view key) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    if (!node->is_boolean()) {
        fail_value(key, "true or false");
    }
    return node->as_boolean()->get();
}

std::optional<std::string> Section::text(std::string_view key, std::string_view expected) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    const auto* value = node->as_string();
    if (value == nullptr || value->get().empty()) {
        fail_value(key, expected);
    }
    const std::string& text = value->get();
    if (std::any_of(text.begin(), text.end(), is_control)) {
        fail_value(key, fmt::format("{}, without control characters", expected));
    }
    return text;
}

std::string Section::required_text(std::string_view key, std::string_view expected) const {
    auto value = text(key, expected);
    if (!value) {
        fail_missing(key, expected);
    }
    return std::move(*value);
}

std::optional<std::chrono::milliseconds> Section::duration(std::string_view key,
                                                           std::chrono::milliseconds min,
                                                           std::chrono::milliseconds max) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    std::optional<std::int64_t> ms;
    if (const auto* seconds = node->as_integer(); seconds != nullptr) {
        // A bare integer counts seconds. The bound keeps the product inside 64 bits.
        if (seconds->get() >= 0 && seconds->get() <= 1'000'000'000'000) {
            ms = seconds->get() * 1'000;
        }
    } else if (const auto* text = node->as_string(); text != nullptr) {
        ms = parse_duration(text->get());
    }
    if (!ms || *ms < min.count() || *ms > max.count()) {
        fail_value(key, fmt::format("a duration from {} to {}, such as \"10s\" (units ms, s, m "
                                    "and h; a bare integer counts seconds)",
                                    format_duration(min.count()), format_duration(max.count())));
    }
    return std::chrono::milliseconds(*ms);
}

std::optional<std::filesystem::path> Section::file(std::string_view key) const {
    auto value = text(key, "a non-empty file path");
    if (!value) {
        return std::nullopt;
    }
    const std::filesystem::path path(*value);
    if (path.is_absolute()) {
        return path.lexically_normal();
    }
    return (context_->base_directory / path).lexically_normal();
}

std::optional<SocketAddress> Section::address(std::string_view key) const {
    auto value = text(key, fmt::format("an address of the form {}", kAddressForms));
    if (!value) {
        return std::nullopt;
    }
    SocketAddress address;
    if (const std::string problem = parse_address(*value, address); !problem.empty()) {
        fail_key(key, address_error(*value, problem));
    }
    return address;
}

const toml::array* Section::array(std::string_view key) const {
    const toml::node* node = find(key);
    if (node != nullptr && !node->is_array()) {
        fail_value(key, "an array");
    }
    return node != nullptr ? node->as_array() : nullptr;
}

template <typename T, std::size_t N>
std::optional<T> Section::choice(std::string_view key,
                                 const std::array<Choice<T>, N>& choices) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    std::string names;
    for (const Choice<T>& choice : choices) {
        if (node->is_string() && node->as_string()->get() == choice.name) {
            return choice.value;
        }
        names += names.empty() ? "" : ", ";
        names += quote(choice.name);
    }
    const std::size_t last_comma = names.rfind(", ");
    if (last_comma != std::string::npos) {
        names.replace(last_comma, 2, " or ");
    }
    fail_value(key, names);
}

std::optional<Section> Section::table(std::string_view key,
                                      std::initializer_list<std::string_view> keys) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    if (!node->is_table()) {
        fail_value(key, fmt::format("a table ([{}])", key_path(key)));
    }
    return Section(*context_, *node->as_table(), key_path(key),
                   fmt::format("in [{}]", key_path(key)), keys);
}

std::vector<Section> Section::tables(std::string_view key,
                                     std::initializer_list<std::string_view> keys) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
        return {};
    }
    const toml::array* array = node->as_array();
    if (array != nullptr && array->empty()) {
        return {};
    }
    if (array == nullptr || !array->is_array_of_tables()) {
        fail_value(key, fmt::format("an array of tables ([[{}]])", key_path(key)));
    }
    std::vector<Section> sections;
    for (std::size_t i = 0; i < array->size(); ++i) {
        const std::string path = fmt::format("{}[{}]", key_path(key), i);
        const toml::table* table = array->get_as<toml::table>(i);
        if (table == nullptr) {
            fail_value(key, fmt::format("an array of tables ([[{}]])", key_path(key)));
        }
        sections.emplace_back(*context_, *table, path, "in " + path, keys);
    }
    return sections;
}

constexpr std::array<Choice<LogLevel>, 4> kLogLevels{{{"debug", LogLevel::debug},
                                                      {"info", LogLevel::info},
                                                      {"warning", LogLevel::warning},
                                                      {"error", LogLevel::error}}};
constexpr std::array<Choice<TlsVersion>, 2> kTlsVersions{
    {{"1.2", TlsVersion::tls1_2}, {"1.3", TlsVersion::tls1_3}}};
constexpr std::array<Choice<SniMismatch>, 2> kSniPolicies{
    {{"default", SniMismatch::use_default}, {"reject", SniMismatch::reject}}};
constexpr std::array<Choice<AlpnMismatch>, 2> kAlpnPolicies{
    {{"continue", AlpnMismatch::continue_without_alpn}, {"reject", AlpnMismatch::reject}}};

ServerConfig read_server(const Section& section) {
    ServerConfig server;
    const auto backend = section.text("tls-backend", R"("openssl" or "botan")");
    if (backend && backend != "openssl" && backend != "botan") {
        section.fail_value("tls-backend", R"("openssl" or "botan")");
    }
    server.tls_backend = backend.value_or(server.tls_backend);
    server.log_level = section.choice("log-level", kLogLevels).value_or(server.log_level);
    return server;
}

// A listener address in a form where equal addresses compare equal ("[::0]" and "[::]").
std::string listener_identity(const SocketAddress& address) {
    if (address.kind == SocketAddress::Kind::unix_socket) {
        return "unix:" + address.path;
    }
    std::array<unsigned char, sizeof(in6_addr)> bytes{};
    std::array<char, INET6_ADDRSTRLEN> text{};
    const int family = address.host.find(':') != std::string::npos ? AF_INET6 : AF_INET;
    std::string host = ascii_lowercase(address.host);
    if (::inet_pton(family, host.c_str(), bytes.data()) == 1 &&
        ::inet_ntop(family, bytes.data(), text.data(), text.size()) != nullptr) {
        host = text.data();
    }
    return fmt::format("[{}]:{}", host, address.port);
}

std::vector<ListenerConfig> read_listeners(const Section& top) {
    std::vector<ListenerConfig> listeners;
    const auto sections = top.tables("listener", {"address"});
    if (sections.empty()) {
        top.fail_missing("listener", R"(at least one [[listener]] with an address such as )"
                                     R"("0.0.0.0:8443")");
    }
    for (const Section& section : sections) {
        auto address = section.address("address");
        if (!address) {
            section.fail_missing("address",
                                 fmt::format("an address of the form {}", kAddressForms));
        }
        const std::string identity = listener_identity(*address);
        for (std::size_t i = 0; i < listeners.size(); ++i) {
            if (listener_identity(listeners[i].address) == identity) {
                section.fail_key("address", fmt::format("{} is the same address as listener[{}] "
                                                        "at {}; expected distinct addresses",
                                                        quote(address->text), i,
                                                        listeners[i].where.to_string()));
            }
        }
        listeners.push_back(ListenerConfig{*address, section.where("address")});
    }
    return listeners;
}

void read_tls_versions(const Section& section, TlsConfig& tls) {
    tls.min_version = section.choice("min-version", kTlsVersions).value_or(tls.min_version);
    tls.max_version = section.choice("max-version", kTlsVersions).value_or(tls.max_version);
    if (tls.min_version > tls.max_version) {
        const std::string_view key =
            section.find("min-version") != nullptr ? "min-version" : "max-version";
        section.fail_key(key,
                         "tls.min-version is above tls.max-version; expected "
                         "min-version <= max-version");
    }
}

TlsConfig read_tls(const Section& section) {
    TlsConfig tls;
    read_tls_versions(section, tls);
    tls.ciphersuites =
        section
            .text("ciphersuites", R"(an OpenSSL TLS 1.3 suite list such as )"
                                  R"("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384")")
            .value_or(tls.ciphersuites);
    tls.ciphers = section
                      .text("ciphers", R"(an OpenSSL cipher list such as )"
                                       R"("ECDHE+AESGCM:ECDHE+CHACHA20")")
                      .value_or(tls.ciphers);
    tls.groups = section.text("groups", R"(an OpenSSL group list such as "X25519:P-256")")
                     .value_or(tls.groups);
    tls.prefer_server_ciphers =
        section.boolean("prefer-server-ciphers").value_or(tls.prefer_server_ciphers);
    tls.rsa_key_exchange = section.boolean("rsa-key-exchange").value_or(tls.rsa_key_exchange);
    tls.unknown_sni = section.choice("unknown-sni", kSniPolicies).value_or(tls.unknown_sni);
    tls.missing_sni = section.choice("missing-sni", kSniPolicies).value_or(tls.missing_sni);
    tls.alpn_mismatch =
        section.choice("alpn-mismatch", kAlpnPolicies).value_or(tls.alpn_mismatch);
    return tls;
}

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

void read_timeouts(const Section& section, LimitsConfig& limits) {
    limits.handshake_timeout = section.duration("handshake-timeout", milliseconds(100), minutes(10))
                                   .value_or(limits.handshake_timeout);
    limits.idle_timeout =
        section.duration("idle-timeout", seconds(1), hours(24)).value_or(limits.idle_timeout);
    limits.drain_timeout =
        section.duration("drain-timeout", seconds(0), hours(1)).value_or(limits.drain_timeout);
    limits.backend_connect_timeout =
        section.duration("backend-connect-timeout", milliseconds(100), minutes(5))
            .value_or(limits.backend_connect_timeout);
    limits.key_operation_timeout =
        section.duration("key-operation-timeout", milliseconds(100), minutes(1))
            .value_or(limits.key_operation_timeout);
}

LimitsConfig read_limits(const Section& section) {
    LimitsConfig limits;
    limits.spare_children = section.integer_or("spare-children", 0, 1024, limits.spare_children);
    limits.max_connections =
        section.integer_or("max-connections", 1, 1'000'000, limits.max_connections);
    if (limits.spare_children > limits.max_connections) {
        const std::string_view key =
            section.find("spare-children") != nullptr ? "spare-children" : "max-connections";
        section.fail_key(key, fmt::format("spare-children ({}) is above max-connections ({}); "
                                          "expected spare-children <= max-connections",
                                          limits.spare_children, limits.max_connections));
    }
    read_timeouts(section, limits);
    limits.buffer_size = section.integer_or("buffer-size", 1024, 1'048'576, limits.buffer_size);
    return limits;
}

KeyProcessConfig read_key_process(const Section& section) {
    KeyProcessConfig key_process;
    key_process.workers = section.integer_or("workers", 0, 256, key_process.workers);
    key_process.max_operations_per_channel = section.integer_or(
        "max-operations-per-channel", 1, 64, key_process.max_operations_per_channel);
    key_process.pkcs11_module = section.file("pkcs11-module");
    key_process.stats_interval = std::chrono::seconds(
        section.integer_or("stats-interval", 0, 86'400, key_process.stats_interval.count()));
    return key_process;
}

constexpr std::array<Choice<SeccompSetting>, 3> kSeccompSettings{
    {{"enforce", SeccompSetting::enforce},
     {"log", SeccompSetting::log},
     {"off", SeccompSetting::off}}};

constexpr std::array<Choice<ConnectionNetwork>, 2> kConnectionNetworks{
    {{"host", ConnectionNetwork::host}, {"none", ConnectionNetwork::none}}};

constexpr std::array<Choice<SpawnMode>, 2> kSpawnModes{
    {{"fork", SpawnMode::fork}, {"exec", SpawnMode::exec}}};

// The portable user name characters of POSIX (letters, digits, '.', '_', '-'), not starting
// with '-', and at most 32 bytes as useradd on Debian accepts.
bool is_user_name(std::string_view name) {
    const auto portable = [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '_' || c == '-';
    };
    return !name.empty() && name.size() <= 32 && name.front() != '-' &&
           std::all_of(name.begin(), name.end(), portable);
}

std::string read_user_name(const Section& section, std::string_view key, std::string fallback) {
    constexpr std::string_view expected =
        "a user name of 1 to 32 letters, digits, '.', '_' or '-', not starting with '-'";
    const auto name = section.text(key, expected);
    if (name && !is_user_name(*name)) {
        section.fail_value(key, expected);
    }
    return name.value_or(std::move(fallback));
}

// The range checks that need nothing but the config. The user database, root and PID
// namespaces are checked at start (decide_sandbox_layers).
std::optional<UidRange> read_connection_uids(const Section& section, const LimitsConfig& limits) {
    constexpr std::string_view key = "connection-uids";
    const auto text = section.text(key, "a uid range \"FIRST-LAST\"");
    if (!text) {
        return std::nullopt;
    }
    const auto range = parse_uid_range(*text);
    if (!range) {
        section.fail_value(key, fmt::format("a uid range \"FIRST-LAST\" of two decimal ids with "
                                            "FIRST <= LAST <= {}, such as \"2000000-2065535\"",
                                            max_range_id));
    }
    if (range->contains(0)) {
        section.fail_key(key, fmt::format("the range {} contains uid 0 (root); start it above "
                                          "every system account, such as \"2000000-2065535\"",
                                          range->to_string()));
    }
    const std::uint64_t needed = std::uint64_t{limits.max_connections} + limits.spare_children;
    if (range->count < needed) {
        section.fail_key(key, fmt::format("the range {} has {} ids, fewer than max-connections "
                                          "({}) + spare-children ({}) = {}; widen the range or "
                                          "lower [limits] max-connections",
                                          range->to_string(), range->count, limits.max_connections,
                                          limits.spare_children, needed));
    }
    return range;
}

SandboxConfig read_sandbox(const Section& section, const LimitsConfig& limits) {
    SandboxConfig sandbox;
    sandbox.where = section.where();
    sandbox.network_user = read_user_name(section, "network-user", sandbox.network_user);
    sandbox.key_user = read_user_name(section, "key-user", sandbox.key_user);
    if (sandbox.network_user == sandbox.key_user) {
        const std::string_view key =
            section.find("key-user") != nullptr ? "key-user" : "network-user";
        section.fail_key(key, fmt::format("network-user and key-user are both {}; expected two "
                                          "different users, so that a connection process "
                                          "cannot signal or ptrace the key process",
                                          quote(sandbox.key_user)));
    }
    sandbox.root_directory = section.file("root-directory").value_or(sandbox.root_directory);
    sandbox.seccomp = section.choice("seccomp", kSeccompSettings).value_or(sandbox.seccomp);
    sandbox.namespaces = section.boolean("namespaces").value_or(sandbox.namespaces);
    sandbox.connection_uids = read_connection_uids(section, limits);
    sandbox.connection_network = section.choice("connection-network", kConnectionNetworks)
                                     .value_or(sandbox.connection_network);
    sandbox.spawn = section.choice("spawn", kSpawnModes).value_or(sandbox.spawn);
    return sandbox;
}

// The text of the uri key. A PKCS#11 URI may contain a PIN, so no message repeats it.
std::string read_uri_text(const Section& section) {
    const toml::node* node = section.find("uri");
    const auto* value = node->as_string();
    if (value == nullptr) {
        section.fail_value("uri", "a PKCS#11 URI string");
    }
    const std::string& text = value->get();
    if (text.empty() || std::any_of(text.begin(), text.end(), is_control)) {
        section.fail_key("uri", "expected a non-empty PKCS#11 URI without control characters");
    }
    return text;
}

// A path from inside the URI, made absolute like the paths of the config.
std::filesystem::path resolve_path(const Section& section, const std::string& text) {
    const std::filesystem::path path(text);
    if (path.is_absolute()) {
        return path.lexically_normal();
    }
    return (section.context().base_directory / path).lexically_normal();
}

// RFC 7512 section 2.4: pin-source is a URI; a "file:" URI or a bare path is what cloister
// reads.
std::filesystem::path pin_source_path(const Section& section, const std::string& source) {
    std::string path = source;
    if (path.starts_with("file://")) {
        path.erase(0, 7);
    } else if (path.starts_with("file:")) {
        path.erase(0, 5);
    }
    if (path.empty() || path.find(':') != std::string::npos) {
        section.fail_key("uri", "pin-source must be a file path or a file: URI");
    }
    return resolve_path(section, path);
}

std::filesystem::path read_module(const Section& section, const pkcs11::Uri& uri,
                                  const KeyProcessConfig& key_process) {
    if (uri.module_name) {
        section.fail_key("uri", "module-name is not supported, because cloister loads modules "
                                "by path; use module-path, or the module key");
    }
    const auto module = section.file("module");
    if (module && uri.module_path && resolve_path(section, *uri.module_path) != *module) {
        section.fail_key("module", "the URI's module-path names another module; expected one "
                                   "module for the key");
    }
    if (module) {
        return *module;
    }
    if (uri.module_path) {
        return resolve_path(section, *uri.module_path);
    }
    if (!key_process.pkcs11_module) {
        section.fail_missing("module", "the path of the PKCS#11 module (.so) that serves the "
                                       "token, here or as [key-process] pkcs11-module");
    }
    return *key_process.pkcs11_module;
}

void read_pin_source(const Section& section, const pkcs11::Uri& uri, KeyConfig& key) {
    key.pin_file = section.file("pin-file");
    const int sources = (key.pin_file ? 1 : 0) + (uri.pin_source ? 1 : 0) + (uri.pin_value ? 1 : 0);
    if (sources > 1) {
        section.fail_key(key.pin_file ? "pin-file" : "uri",
                         "the PIN is given more than once (pin-file, and pin-value or "
                         "pin-source in the URI); expected exactly one");
    }
    if (sources == 0) {
        section.fail_missing("pin-file", "a file with the token's user PIN (mode 0600), or "
                                         "pin-value or pin-source in the URI query");
    }
    if (uri.pin_source) {
        key.pin_file = pin_source_path(section, *uri.pin_source);
    }
}

// Reads a key in a PKCS#11 token: `uri`, `module` (or [key-process] pkcs11-module) and
// `pin-file` (or the URI's pin-source or pin-value).
void read_token_key(const Section& section, KeyConfig& key,
                    const KeyProcessConfig& key_process) {
    if (section.find("passphrase-file") != nullptr) {
        section.fail_key("passphrase-file", "applies only to a key file; a key with a uri "
                                            "takes pin-file");
    }
    // NOTE: a pin-value in the URI stays in Config::keys, which every cloister process
    // inherits; pin-file keeps the PIN in the key process alone.
    key.uri = read_uri_text(section);
    pkcs11::Uri uri;
    try {
        uri = pkcs11::parse_uri(key.uri);
    } catch (const Error& error) {
        section.fail_key("uri", error.what());
    }
    key.module = read_module(section, uri, key_process);
    read_pin_source(section, uri, key);
}

// Reads where the key lives: `file` (with `passphrase-file`), or a token key (see
// read_token_key).
void read_key_source(const Section& section, KeyConfig& key,
                     const KeyProcessConfig& key_process) {
    const bool has_file = section.find("file") != nullptr;
    if (has_file && section.find("uri") != nullptr) {
        section.fail_key("uri", "file and uri are both set; expected file for a key file or "
                                "uri for a key in a PKCS#11 token");
    }
    if (!has_file && section.find("uri") != nullptr) {
        read_token_key(section, key, key_process);
        return;
    }
    for (const std::string_view token_key : {"module", "pin-file"}) {
        if (section.find(token_key) != nullptr) {
            section.fail_key(token_key, "applies only to a key with a uri");
        }
    }
    auto file = section.file("file");
    if (!file) {
        section.fail_missing("file", "the path of a PEM or PKCS#8 private key file, or a uri "
                                     "of a key in a PKCS#11 token");
    }
    key.file = std::move(*file);
    key.passphrase_file = section.file("passphrase-file");
}

std::vector<KeyConfig> read_keys(const Section& top, const KeyProcessConfig& key_process) {
    const auto sections = top.tables(
        "key", {"name", "file", "passphrase-file", "uri", "module", "pin-file"});
    if (sections.empty()) {
        top.fail_missing("key", R"(at least one [[key]] with a name and a file)");
    }
    std::vector<KeyConfig> keys;
    for (const Section& section : sections) {
        KeyConfig key;
        key.name = section.required_text("name", "a non-empty key name");
        for (const KeyConfig& other : keys) {
            if (other.name == key.name) {
                section.fail_key("name", fmt::format("duplicate key name {}, first defined at {}; "
                                                     "expected a unique name for each [[key]]",
                                                     quote(key.name), other.where.to_string()));
            }
        }
        read_key_source(section, key, key_process);
        key.where = section.where();
        keys.push_back(std::move(key));
    }
    return keys;
}

std::size_t find_key(const Section& section, const std::string& name,
                     const std::vector<KeyConfig>& keys) {
    std::string names;
    for (std::size_t i = 0; i < keys.size(); ++i) {
        if (keys[i].name == name) {
            return i;
        }
        names += names.empty() ? "" : ", ";
        names += quote(keys[i].name);
    }
    section.fail_key(
        "key", fmt::format("no [[key]] is named {}; expected one of: {}", quote(name), names));
}

CertificateConfig read_certificate(const Section& section, const std::vector<KeyConfig>& keys) {
    CertificateConfig certificate;
    auto chain = section.file("chain");
    if (!chain) {
        section.fail_missing("chain", "the path of a PEM certificate chain, leaf first");
    }
    certificate.chain = std::move(*chain);
    certificate.key_name = section.required_text("key", "the name of a [[key]]");
    certificate.key_index = find_key(section, certificate.key_name, keys);
    certificate.where = section.where();
    return certificate;
}

void read_server_names(const Section& section, VhostConfig& vhost) {
    const toml::array* names = section.array("server-names");
    if (names == nullptr) {
        return;
    }
    for (std::size_t i = 0; i < names->size(); ++i) {
        const toml::node& node = *names->get(i);
        const SourceLocation where = section.context().locate(node.source());
        const std::string path = fmt::format("{}[{}]", section.key_path("server-names"), i);
        if (!node.is_string()) {
            fail(where,
                 fmt::format("{}: expected a server name string, got {}", path, describe(node)));
        }
        const std::string& name = node.as_string()->get();
        if (const std::string problem = server_name_problem(name); !problem.empty()) {
            fail(where, fmt::format("{}: {}", path, problem));
        }
        vhost.server_names.push_back(ascii_lowercase(name));
        vhost.server_name_locations.push_back(where);
    }
}

// RFC 7301 section 3.1: a ProtocolName is 1 to 255 bytes.
constexpr std::size_t kMaxAlpnNameLength = 255;

void read_alpn(const Section& section, VhostConfig& vhost) {
    const toml::array* names = section.array("alpn");
    if (names == nullptr) {
        return;
    }
    for (std::size_t i = 0; i < names->size(); ++i) {
        const toml::node& node = *names->get(i);
        const SourceLocation where = section.context().locate(node.source());
        const std::string path = fmt::format("{}[{}]", section.key_path("alpn"), i);
        const std::string_view expected =
            R"(a protocol name of 1 to 255 bytes such as "h2" or "http/1.1")";
        if (!node.is_string()) {
            fail(where, fmt::format("{}: expected {}, got {}", path, expected, describe(node)));
        }
        const std::string& name = node.as_string()->get();
        if (name.empty() || name.size() > kMaxAlpnNameLength) {
            fail(where, fmt::format("{}: expected {}, got {} bytes", path, expected, name.size()));
        }
        if (std::find(vhost.alpn.begin(), vhost.alpn.end(), name) != vhost.alpn.end()) {
            fail(where, fmt::format("{}: {} is listed twice; expected each protocol once", path,
                                    quote(name)));
        }
        vhost.alpn.push_back(name);
    }
}

VhostConfig read_vhost(const Section& section, std::size_t index,
                       const std::vector<KeyConfig>& keys) {
    VhostConfig vhost;
    read_server_names(section, vhost);
    vhost.name =
        vhost.server_names.empty() ? fmt::format("vhost[{}]", index) : vhost.server_names.front();
    vhost.default_explicit = section.boolean("default").value_or(false);
    vhost.is_default = vhost.default_explicit;
    auto backend = section.address("backend");
    if (!backend) {
        section.fail_missing("backend", fmt::format("an address of the form {}", kAddressForms));
    }
    vhost.backend = std::move(*backend);
    read_alpn(section, vhost);
    const auto certificates = section.tables("certificate", {"chain", "key"});
    if (certificates.empty()) {
        section.fail_missing("certificate",
                             "at least one [[vhost.certificate]] with a chain and a key");
    }
    for (const Section& certificate : certificates) {
        vhost.certificates.push_back(read_certificate(certificate, keys));
    }
    vhost.where = section.where();
    return vhost;
}

// Marks the default vhost: the one with default = true, or the first. Every vhost without
// server names must be that one, because no SNI could reach it otherwise.
void resolve_default(const std::vector<Section>& sections, std::vector<VhostConfig>& vhosts) {
    std::optional<std::size_t> chosen;
    for (std::size_t i = 0; i < vhosts.size(); ++i) {
        if (vhosts[i].default_explicit && chosen) {
            sections[i].fail_key(
                "default", fmt::format("vhost[{}] at {} is already the default; "
                                       "expected default = true in at most one "
                                       "[[vhost]]",
                                       *chosen, sections[*chosen].where("default").to_string()));
        }
        if (vhosts[i].default_explicit) {
            chosen = i;
        }
    }
    vhosts[chosen.value_or(0)].is_default = true;
    for (std::size_t i = 0; i < vhosts.size(); ++i) {
        if (vhosts[i].server_names.empty() && !vhosts[i].is_default) {
            sections[i].fail_key(
                "server-names",
                fmt::format("missing or empty, but only the default vhost (here vhost[{}]) can "
                            "serve clients whose SNI matches no name; expected at least one "
                            "server name",
                            chosen.value_or(0)));
        }
    }
}

std::vector<VhostConfig> read_vhosts(const Section& top, const std::vector<KeyConfig>& keys) {
    const auto sections =
        top.tables("vhost", {"server-names", "default", "backend", "alpn", "certificate"});
    if (sections.empty()) {
        top.fail_missing("vhost", R"(at least one [[vhost]] with a backend and a certificate)");
    }
    std::vector<VhostConfig> vhosts;
    for (std::size_t i = 0; i < sections.size(); ++i) {
        vhosts.push_back(read_vhost(sections[i], i, keys));
    }
    resolve_default(sections, vhosts);
    return vhosts;
}

// Botan 2.19 speaks TLS 1.2 only. With tls-backend = "botan", a version range that needs
// TLS 1.3 fails, and a range without a written max-version ends at TLS 1.2.
void fit_versions_to_backend(const std::optional<Section>& tls, Config& config) {
    if (config.server.tls_backend != "botan") {
        return;
    }
    constexpr std::string_view problem =
        R"("1.3" needs TLS 1.3, and tls-backend "botan" (Botan 2.19) speaks TLS 1.2 only; )"
        R"(expected "1.2", or tls-backend = "openssl" for TLS 1.3)";
    if (tls && config.tls.min_version == TlsVersion::tls1_3) {
        tls->fail_key("min-version", problem);
    }
    if (!tls || tls->find("max-version") == nullptr) {
        config.tls.max_version = TlsVersion::tls1_2;
    } else if (config.tls.max_version == TlsVersion::tls1_3) {
        tls->fail_key("max-version", problem);
    }
}

Config read_config(const Section& top) {
    Config config;
    if (const auto section = top.table("server", {"tls-backend", "log-level"})) {
        config.server = read_server(*section);
    }
    config.listeners = read_listeners(top);
    const auto tls =
        top.table("tls", {"min-version", "max-version", "ciphersuites", "ciphers", "groups",
                          "prefer-server-ciphers", "unknown-sni", "missing-sni",
                          "rsa-key-exchange", "alpn-mismatch"});
    if (tls) {
        config.tls = read_tls(*tls);
    }
    fit_versions_to_backend(tls, config);
    if (const auto section =
            top.table("limits", {"spare-children", "max-connections", "handshake-timeout",
                                 "idle-timeout", "drain-timeout", "backend-connect-timeout",
                                 "key-operation-timeout", "buffer-size"})) {
        config.limits = read_limits(*section);
    }
    if (const auto section = top.table("key-process", {"workers", "max-operations-per-channel",
                                                      "pkcs11-module", "stats-interval"})) {
        config.key_process = read_key_process(*section);
    }
    config.keys = read_keys(top, config.key_process);
    config.vhosts = read_vhosts(top, config.keys);
    if (const auto section = top.table("sandbox", {"network-user", "key-user", "root-directory",
                                                   "seccomp", "namespaces", "connection-uids",
                                                   "connection-network", "spawn"})) {
        config.sandbox = read_sandbox(*section, config.limits);
    }
    return config;
}

std::filesystem::path absolute_path(const std::filesystem::path& path, const std::string& source) {
    std::error_code error;
    std::filesystem::path absolute = std::filesystem::absolute(path, error);
    if (error) {
        throw Error(ErrorKind::config, fmt::format("{}: failed to make the path absolute: {}",
                                                   source, error.message()));
    }
    return absolute.lexically_normal();
}

toml::table parse_toml(std::string_view text, const std::string& source) {
    try {
        return toml::parse(text, std::string_view(source));
    } catch (const toml::parse_error& error) {
        const SourceLocation where{source, error.source().begin.line, error.source().begin.column};
        fail(where, fmt::format("invalid TOML: {}", error.description()));
    }
}

// Throws unless fd is a regular file of at most kMaxConfigFileSize bytes. A FIFO or a device
// such as /dev/zero would otherwise block start-up or grow memory without limit.
void require_regular_config_file(const Fd& fd, const std::filesystem::path& path) {
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0) {
        throw Error(ErrorKind::config, fmt::format("{}: failed to stat the config file: {}",
                                                   path.string(), std::strerror(errno)));
    }
    if (!S_ISREG(info.st_mode)) {
        throw Error(ErrorKind::config,
                    fmt::format("{}: the config file is not a regular file; expected a TOML file",
                                path.string()));
    }
    if (static_cast<std::uintmax_t>(info.st_size) > kMaxConfigFileSize) {
        throw Error(ErrorKind::config,
                    fmt::format("{}: the config file has {} bytes, more than the maximum of {}",
                                path.string(), info.st_size, kMaxConfigFileSize));
    }
}

std::string read_file(const std::filesystem::path& path) {
    // O_NONBLOCK: opening a FIFO without a writer returns at once, and the check below rejects
    // it. Reads from a regular file ignore the flag.
    const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) {
        throw Error(ErrorKind::config, fmt::format("{}: failed to open the config file: {}",
                                                   path.string(), std::strerror(errno)));
    }
    require_regular_config_file(fd, path);
    std::string text;
    std::array<char, 65536> buffer{};
    while (true) {
        const ssize_t count = ::read(fd.get(), buffer.data(), buffer.size());
        if (count < 0 && errno == EINTR) {
            continue;
        }
        if (count < 0) {
            throw Error(ErrorKind::config, fmt::format("{}: failed to read the config file: {}",
                                                       path.string(), std::strerror(errno)));
        }
        if (count == 0) {
            return text;
        }
        text.append(buffer.data(), static_cast<std::size_t>(count));
        if (text.size() > kMaxConfigFileSize) {
            throw Error(ErrorKind::config,
                        fmt::format("{}: the config file grew beyond the maximum of {} bytes",
                                    path.string(), kMaxConfigFileSize));
        }
    }
}

Context make_context(const std::string& source) {
    const std::filesystem::path path(source);
    const std::filesystem::path directory = path.has_parent_path() ? path.parent_path() : ".";
    return Context{source, absolute_path(directory, source)};
}

}  // namespace

SocketAddress SocketAddress::parse(const std::string& text) {
    SocketAddress address;
    if (const std::string problem = parse_address(text, address); !problem.empty()) {
        throw Error(ErrorKind::config, address_error(text, problem));
    }
    return address;
}

Config parse_config(std::string_view text, const std::string& source) {
    const Context context = make_context(source);
    const toml::table root = parse_toml(text, source);
    const Section top(context, root, "", "at the top level",
                      {"server", "listener", "tls", "limits", "key-process", "key", "vhost",
                       "sandbox"});
    Config config = read_config(top);
    config.source = source.empty() ? std::filesystem::path() : absolute_path(source, source);
    // The table rejects a server name listed twice; building it here makes --check-config
    // and every other load see that error.
    const VhostTable table(config.vhosts, config.tls);
    return config;
}

Config load_config(const std::filesystem::path& path) {
    return parse_config(read_file(path), path.string());
}

}  // namespace cloister
