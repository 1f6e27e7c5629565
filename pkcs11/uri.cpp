#include "pkcs11/uri.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <limits>

#include "core/error.h"

namespace cloister::pkcs11 {
namespace {

// RFC 7512 section 2.3: characters that may appear unencoded in a path value (pk11-pchar)
// and, additionally, in a query value (pk11-qchar).
constexpr std::string_view path_special = ":[]@!$'()*+,=";
constexpr std::string_view query_special = "/?|";

constexpr std::array<std::string_view, 4> query_names{"pin-value", "pin-source", "module-name",
                                                      "module-path"};

[[noreturn]] void fail(const std::string& problem) {
    throw Error(ErrorKind::config, "invalid PKCS#11 URI: " + problem);
}

bool is_unreserved(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

bool is_value_char(char c, bool in_query) {
    if (is_unreserved(c) || path_special.find(c) != std::string_view::npos) {
        return true;
    }
    return in_query && query_special.find(c) != std::string_view::npos;
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

// One attribute of the path or the query, before decoding.
struct RawAttribute {
    std::string_view name;
    std::string_view value;
    bool in_query = false;
    bool secret = false;  // pin-value: messages must not quote it
};

// Describes a character for a message, or hides it for a secret value.
std::string describe_char(const RawAttribute& attribute, std::size_t offset) {
    if (attribute.secret) {
        return "a character";
    }
    const char c = attribute.value[offset];
    if (c > 0x20 && c < 0x7f) {
        return fmt::format("'{}' at offset {}", c, offset);
    }
    return fmt::format("byte 0x{:02x} at offset {}", static_cast<unsigned char>(c), offset);
}

// Percent-decodes the value into out (any container of bytes with push_back and reserve).
template <typename Bytes>
void decode_into(const RawAttribute& attribute, Bytes& out) {
    const std::string_view value = attribute.value;
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size(); ++i) {
        const char c = value[i];
        if (c == '%') {
            const bool complete = i + 2 < value.size();
            const int high = complete ? hex_value(value[i + 1]) : -1;
            const int low = complete ? hex_value(value[i + 2]) : -1;
            if (high < 0 || low < 0) {
                fail(fmt::format("{}: '%' must be followed by two hexadecimal digits",
                                 attribute.name));
            }
            out.push_back(static_cast<std::uint8_t>(high * 16 + low));
            i += 2;
            continue;
        }
        if (!is_value_char(c, attribute.in_query)) {
            fail(fmt::format("{}: {} must be percent-encoded in the {} part", attribute.name,
                             describe_char(attribute, i), attribute.in_query ? "query" : "path"));
        }
        out.push_back(static_cast<std::uint8_t>(c));
    }
}

std::string decode_text(const RawAttribute& attribute) {
    std::vector<std::uint8_t> bytes;
    decode_into(attribute, bytes);
    return {bytes.begin(), bytes.end()};
}

std::uint64_t decode_number(const RawAttribute& attribute) {
    const std::string text = decode_text(attribute);
    std::uint64_t number = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
        fail(fmt::format("{}: expected a decimal number, got \"{}\"", attribute.name, text));
    }
    return number;
}

std::pair<unsigned, unsigned> decode_version(const RawAttribute& attribute) {
    const std::string text = decode_text(attribute);
    const std::size_t dot = text.find('.');
    const std::string major = text.substr(0, dot);
    const std::string minor = dot == std::string::npos ? "0" : text.substr(dot + 1);
    RawAttribute part = attribute;
    part.value = major;
    const std::uint64_t major_number = decode_number(part);
    part.value = minor;
    const std::uint64_t minor_number = decode_number(part);
    constexpr std::uint64_t byte_max = std::numeric_limits<std::uint8_t>::max();
    if (major_number > byte_max || minor_number > byte_max) {
        fail(fmt::format("{}: expected MAJOR or MAJOR.MINOR with numbers up to 255, got \"{}\"",
                         attribute.name, text));
    }
    return {static_cast<unsigned>(major_number), static_cast<unsigned>(minor_number)};
}

template <typename T>
void set_once(std::optional<T>& field, const RawAttribute& attribute, T value) {
    if (field) {
        fail(fmt::format("attribute {} appears twice", attribute.name));
    }
    field = std::move(value);
}

void set_path_text(Uri& uri, const RawAttribute& attribute) {
    const std::array<std::pair<std::string_view, std::optional<std::string> Uri::*>, 9> fields{{
        {"token", &Uri::token},
        {"manufacturer", &Uri::manufacturer},
        {"model", &Uri::model},
        {"serial", &Uri::serial},
        {"slot-description", &Uri::slot_description},
        {"slot-manufacturer", &Uri::slot_manufacturer},
        {"library-manufacturer", &Uri::library_manufacturer},
        {"library-description", &Uri::library_description},
        {"object", &Uri::object},
    }};
    for (const auto& [name, field] : fields) {
        if (attribute.name == name) {
            set_once(uri.*field, attribute, decode_text(attribute));
            return;
        }
    }
    fail(
        fmt::format("unknown attribute {} in the path part; expected one of: token, "
                    "manufacturer, model, serial, slot-description, slot-manufacturer, "
                    "slot-id, library-manufacturer, library-description, library-version, "
                    "object, id, type",
                    attribute.name));
}

void set_type(Uri& uri, const RawAttribute& attribute) {
    std::string type = decode_text(attribute);
    if (type != "private") {
        fail(
            fmt::format("type={} names no private key; a [[key]] needs type=private or no "
                        "type",
                        type));
    }
    set_once(uri.type, attribute, std::move(type));
}

void set_path_attribute(Uri& uri, const RawAttribute& attribute) {
    const auto query_name = std::find(query_names.begin(), query_names.end(), attribute.name);
    if (query_name != query_names.end()) {
        fail(fmt::format(
            "{} is in the path part (after ';'), where parsers disagree on its "
            "meaning; put it in the query part after '?'{}",
            attribute.name, attribute.name == "pin-value" ? ", or use pin-file instead" : ""));
    }
    if (attribute.name == "id") {
        std::vector<std::uint8_t> id;
        decode_into(attribute, id);
        set_once(uri.id, attribute, std::move(id));
    } else if (attribute.name == "type") {
        set_type(uri, attribute);
    } else if (attribute.name == "slot-id") {
        set_once(uri.slot_id, attribute, decode_number(attribute));
    } else if (attribute.name == "library-version") {
        set_once(uri.library_version, attribute, decode_version(attribute));
    } else {
        set_path_text(uri, attribute);
    }
}

void set_pin_source(Uri& uri, const RawAttribute& attribute) {
    std::string source = decode_text(attribute);
    if (source.starts_with('|')) {
        fail(
            "pin-source starts with '|', which some tools run as a command; cloister reads "
            "the PIN only from a file");
    }
    if (source.empty()) {
        fail("pin-source is empty; expected a file path");
    }
    set_once(uri.pin_source, attribute, std::move(source));
}

void set_query_attribute(Uri& uri, const RawAttribute& attribute) {
    if (attribute.name == "pin-value") {
        SecretBytes pin;
        decode_into(attribute, pin);
        set_once(uri.pin_value, attribute, std::move(pin));
    } else if (attribute.name == "pin-source") {
        set_pin_source(uri, attribute);
    } else if (attribute.name == "module-name") {
        set_once(uri.module_name, attribute, decode_text(attribute));
    } else if (attribute.name == "module-path") {
        set_once(uri.module_path, attribute, decode_text(attribute));
    } else {
        fail(
            fmt::format("unknown attribute {} in the query part; expected pin-value, "
                        "pin-source, module-name or module-path",
                        attribute.name));
    }
}

RawAttribute split_attribute(std::string_view text, bool in_query) {
    const std::size_t equals = text.find('=');
    if (equals == std::string_view::npos || equals == 0) {
        const std::string_view name = text.substr(0, std::min<std::size_t>(text.size(), 40));
        fail(fmt::format("expected NAME=VALUE in the {} part, got \"{}\"",
                         in_query ? "query" : "path",
                         name.find("pin") != std::string_view::npos ? "(hidden)" : name));
    }
    RawAttribute attribute{text.substr(0, equals), text.substr(equals + 1), in_query, false};
    attribute.secret = attribute.name == "pin-value";
    return attribute;
}

// Calls handle for each separator-delimited attribute of part. An empty part has none.
template <typename Handler>
void for_each_attribute(std::string_view part, char separator, bool in_query, Handler handle) {
    if (part.empty()) {
        return;
    }
    std::size_t start = 0;
    while (true) {
        const std::size_t end = part.find(separator, start);
        const std::string_view piece = part.substr(start, end - start);
        if (piece.empty()) {
            fail(
                fmt::format("empty attribute in the {} part (two '{}' in a row, or one at the "
                            "end)",
                            in_query ? "query" : "path", separator));
        }
        handle(split_attribute(piece, in_query));
        if (end == std::string_view::npos) {
            return;
        }
        start = end + 1;
    }
}

bool starts_with_scheme(std::string_view text) {
    constexpr std::string_view scheme = "pkcs11:";
    if (text.size() < scheme.size()) {
        return false;
    }
    for (std::size_t i = 0; i < scheme.size(); ++i) {
        const char c = text[i];
        const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
        if (lower != scheme[i]) {
            return false;
        }
    }
    return true;
}

// Percent-encodes bytes for the path part: everything but unreserved characters.
std::string encode(std::string_view bytes) {
    std::string out;
    for (const char c : bytes) {
        if (is_unreserved(c)) {
            out += c;
        } else {
            out += fmt::format("%{:02x}", static_cast<unsigned char>(c));
        }
    }
    return out;
}

void append(std::string& out, std::string_view name, const std::string& value) {
    out += out.size() > 7 ? ";" : "";
    out += name;
    out += '=';
    out += value;
}

}  // namespace

Uri parse_uri(std::string_view text) {
    if (!starts_with_scheme(text)) {
        fail("expected a URI that starts with \"pkcs11:\"");
    }
    const std::string_view rest = text.substr(7);
    const std::size_t question = rest.find('?');
    const std::string_view path = rest.substr(0, question);
    const std::string_view query =
        question == std::string_view::npos ? std::string_view() : rest.substr(question + 1);

    Uri uri;
    for_each_attribute(path, ';', false, [&uri](const RawAttribute& attribute) {
        set_path_attribute(uri, attribute);
    });
    for_each_attribute(query, '&', true, [&uri](const RawAttribute& attribute) {
        set_query_attribute(uri, attribute);
    });
    if (uri.pin_value && uri.pin_source) {
        fail("both pin-value and pin-source are given; expected at most one");
    }
    return uri;
}

std::string format_id(const std::vector<std::uint8_t>& id) {
    std::string out;
    for (const std::uint8_t byte : id) {
        out += fmt::format("%{:02x}", byte);
    }
    return out;
}

std::string Uri::describe() const {
    std::string out = "pkcs11:";
    const std::array<std::pair<std::string_view, const std::optional<std::string>*>, 9> texts{{
        {"token", &token},
        {"manufacturer", &manufacturer},
        {"model", &model},
        {"serial", &serial},
        {"slot-description", &slot_description},
        {"slot-manufacturer", &slot_manufacturer},
        {"library-manufacturer", &library_manufacturer},
        {"library-description", &library_description},
        {"object", &object},
    }};
    for (const auto& [name, value] : texts) {
        if (*value) {
            append(out, name, encode(**value));
        }
    }
    if (slot_id) {
        append(out, "slot-id", std::to_string(*slot_id));
    }
    if (library_version) {
        append(out, "library-version",
               fmt::format("{}.{}", library_version->first, library_version->second));
    }
    if (id) {
        append(out, "id", format_id(*id));
    }
    if (type) {
        append(out, "type", *type);
    }
    return out;
}

}  // namespace cloister::pkcs11
