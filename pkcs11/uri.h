// PKCS#11 URIs (RFC 7512): which token and which private key a [[key]] refers to.
//
// This part has no dependency on a PKCS#11 module or on OpenSSL, so the config loader in the
// supervisor can validate a URI without loading anything.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pkcs11/secret.h"

namespace cloister::pkcs11 {

// The attributes of one parsed URI, percent-decoded. An absent path attribute matches any
// value. Text attributes hold the decoded bytes, UTF-8 in practice.
struct Uri {
    // Path attributes, RFC 7512 section 2.3. Token attributes match CK_TOKEN_INFO.
    std::optional<std::string> token;  // CK_TOKEN_INFO label
    std::optional<std::string> manufacturer;
    std::optional<std::string> model;
    std::optional<std::string> serial;
    // Slot attributes match CK_SLOT_INFO and the slot id.
    std::optional<std::string> slot_description;
    std::optional<std::string> slot_manufacturer;
    std::optional<std::uint64_t> slot_id;
    // Library attributes match CK_INFO of the module.
    std::optional<std::string> library_manufacturer;
    std::optional<std::string> library_description;
    std::optional<std::pair<unsigned, unsigned>> library_version;  // major, minor
    // Object attributes: CKA_LABEL, CKA_ID and the object class.
    std::optional<std::string> object;
    std::optional<std::vector<std::uint8_t>> id;
    std::optional<std::string> type;  // "private" is the only class a [[key]] accepts

    // Query attributes, RFC 7512 section 2.4. At most one of pin_value and pin_source.
    std::optional<SecretBytes> pin_value;
    std::optional<std::string> pin_source;  // a file path, or "file:" followed by one
    std::optional<std::string> module_name;
    std::optional<std::string> module_path;

    // Returns the URI without its query part, re-encoded, for log lines and messages. It
    // never contains the PIN.
    [[nodiscard]] std::string describe() const;
};

// Parses text as a PKCS#11 URI. Throws Error(config) with a message that names the attribute
// or the character at fault and never repeats a pin-value. Rejected besides syntax errors:
//  - an attribute name that RFC 7512 does not define, including vendor "x-" names, because
//    an attribute cloister ignored would widen what the URI matches;
//  - an attribute given twice;
//  - pin-value, pin-source, module-name or module-path in the path part (after ';'), which
//    some parsers accept and others do not, so the URI would mean different things;
//  - both pin-value and pin-source;
//  - a pin-source that starts with '|', the form some tools run as a command;
//  - type other than "private", and a slot-id or library-version that is not a number.
Uri parse_uri(std::string_view text);

// Returns bytes in the URI form of an id: "%01%a2".
std::string format_id(const std::vector<std::uint8_t>& id);

}  // namespace cloister::pkcs11
