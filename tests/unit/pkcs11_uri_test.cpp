// RFC 7512 PKCS#11 URI parsing: attributes, percent-decoding, and the references cloister
// rejects.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "pkcs11/uri.h"

namespace cloister::pkcs11 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using Bytes = std::vector<std::uint8_t>;

std::string error_of(const std::string& text) {
    try {
        static_cast<void>(parse_uri(text));
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        return error.what();
    }
    ADD_FAILURE() << "parse_uri accepted " << text;
    return {};
}

std::string text_of(const SecretBytes& secret) {
    return {secret.view().begin(), secret.view().end()};
}

TEST(Pkcs11UriTest, ParsesPathAttributes) {
    const Uri uri = parse_uri("pkcs11:token=web;object=www;id=%01%a2;type=private");
    EXPECT_EQ(uri.token, "web");
    EXPECT_EQ(uri.object, "www");
    EXPECT_EQ(uri.id, (Bytes{0x01, 0xa2}));
    EXPECT_EQ(uri.type, "private");
    EXPECT_FALSE(uri.manufacturer);
    EXPECT_FALSE(uri.pin_value);
}

TEST(Pkcs11UriTest, ParsesEveryPathAttribute) {
    const Uri uri = parse_uri(
        "pkcs11:token=t;manufacturer=m;model=mo;serial=s;slot-description=sd;"
        "slot-manufacturer=sm;slot-id=42;library-manufacturer=lm;library-description=ld;"
        "library-version=2.6;object=o");
    EXPECT_EQ(uri.manufacturer, "m");
    EXPECT_EQ(uri.model, "mo");
    EXPECT_EQ(uri.serial, "s");
    EXPECT_EQ(uri.slot_description, "sd");
    EXPECT_EQ(uri.slot_manufacturer, "sm");
    EXPECT_EQ(uri.slot_id, 42U);
    EXPECT_EQ(uri.library_manufacturer, "lm");
    EXPECT_EQ(uri.library_description, "ld");
    ASSERT_TRUE(uri.library_version);
    EXPECT_EQ(uri.library_version->first, 2U);
    EXPECT_EQ(uri.library_version->second, 6U);
}

TEST(Pkcs11UriTest, LibraryVersionWithoutMinor) {
    const Uri uri = parse_uri("pkcs11:library-version=3");
    ASSERT_TRUE(uri.library_version);
    EXPECT_EQ(uri.library_version->first, 3U);
    EXPECT_EQ(uri.library_version->second, 0U);
}

TEST(Pkcs11UriTest, EmptyPathMatchesEverything) {
    const Uri uri = parse_uri("pkcs11:");
    EXPECT_FALSE(uri.token);
    EXPECT_FALSE(uri.object);
    EXPECT_FALSE(uri.id);
}

TEST(Pkcs11UriTest, SchemeIsCaseInsensitive) {
    EXPECT_EQ(parse_uri("PKCS11:token=a").token, "a");
}

TEST(Pkcs11UriTest, DecodesPercentEscapesInLabels) {
    // The label "web key/1": a space and a slash must be encoded in the path.
    const Uri uri = parse_uri("pkcs11:token=my%20token;object=web%20key%2F1");
    EXPECT_EQ(uri.token, "my token");
    EXPECT_EQ(uri.object, "web key/1");
}

TEST(Pkcs11UriTest, DecodesUppercaseAndUtf8Escapes) {
    const Uri uri = parse_uri("pkcs11:object=caf%C3%A9%2f");
    EXPECT_EQ(uri.object, "caf\xc3\xa9/");
}

TEST(Pkcs11UriTest, IdIsBytesNotHexText) {
    // "id=01" is the two ASCII bytes '0' and '1'; the byte 0x01 is written %01.
    EXPECT_EQ(parse_uri("pkcs11:id=01").id, (Bytes{'0', '1'}));
    EXPECT_EQ(parse_uri("pkcs11:id=%00%ff").id, (Bytes{0x00, 0xff}));
}

TEST(Pkcs11UriTest, PinValueInQueryKeepsExactBytes) {
    // The PIN "pa;ss%2F?&é1": every special character percent-encoded.
    const Uri uri = parse_uri(
        "pkcs11:token=pintest;object=web%20key%2F1;type=private"
        "?pin-value=pa%3Bss%252F%3F%26%C3%A91");
    ASSERT_TRUE(uri.pin_value);
    EXPECT_EQ(text_of(*uri.pin_value),
              "pa;ss%2F?&\xc3\xa9"
              "1");
    EXPECT_EQ(uri.object, "web key/1");
}

TEST(Pkcs11UriTest, QueryAllowsSlashAndQuestionMark) {
    const Uri uri = parse_uri(
        "pkcs11:token=a?pin-source=file:/etc/cloister/pin?x&module-path=/usr/"
        "lib/softhsm/libsofthsm2.so");
    EXPECT_EQ(uri.pin_source, "file:/etc/cloister/pin?x");
    EXPECT_EQ(uri.module_path, "/usr/lib/softhsm/libsofthsm2.so");
}

TEST(Pkcs11UriTest, ParsesModuleName) {
    EXPECT_EQ(parse_uri("pkcs11:?module-name=softhsm2").module_name, "softhsm2");
}

TEST(Pkcs11UriTest, RejectsPinValueInPath) {
    const std::string message = error_of("pkcs11:token=a;object=b;pin-value=1234");
    EXPECT_THAT(message, HasSubstr("pin-value is in the path part"));
    EXPECT_THAT(message, HasSubstr("query part"));
    EXPECT_THAT(message, Not(HasSubstr("1234")));
}

TEST(Pkcs11UriTest, RejectsOtherQueryAttributesInPath) {
    EXPECT_THAT(error_of("pkcs11:token=a;pin-source=/x"), HasSubstr("pin-source is in the path"));
    EXPECT_THAT(error_of("pkcs11:module-path=/x.so"), HasSubstr("module-path is in the path"));
    EXPECT_THAT(error_of("pkcs11:module-name=x"), HasSubstr("module-name is in the path"));
}

TEST(Pkcs11UriTest, RejectsCommandPinSource) {
    EXPECT_THAT(error_of("pkcs11:token=a?pin-source=|/bin/echo%201234"),
                HasSubstr("pin-source starts with '|'"));
    EXPECT_THAT(error_of("pkcs11:token=a?pin-source=%7Cecho"), HasSubstr("starts with '|'"));
}

TEST(Pkcs11UriTest, RejectsBothPinForms) {
    EXPECT_THAT(error_of("pkcs11:token=a?pin-value=1&pin-source=/p"),
                HasSubstr("both pin-value and pin-source"));
}

TEST(Pkcs11UriTest, RejectsRepeatedAttribute) {
    EXPECT_THAT(error_of("pkcs11:token=a;token=b"), HasSubstr("token appears twice"));
    EXPECT_THAT(error_of("pkcs11:?pin-value=1&pin-value=2"), HasSubstr("pin-value appears twice"));
}

TEST(Pkcs11UriTest, RejectsUnknownAttributes) {
    EXPECT_THAT(error_of("pkcs11:tokn=a"), HasSubstr("unknown attribute tokn in the path part"));
    EXPECT_THAT(error_of("pkcs11:x-vendor=a"), HasSubstr("unknown attribute x-vendor"));
    EXPECT_THAT(error_of("pkcs11:token=a?pin=1"), HasSubstr("unknown attribute pin in the query"));
}

TEST(Pkcs11UriTest, RejectsTypeOtherThanPrivate) {
    EXPECT_THAT(error_of("pkcs11:object=a;type=cert"), HasSubstr("type=cert names no private key"));
    EXPECT_THAT(error_of("pkcs11:type=public"), HasSubstr("type=public"));
}

TEST(Pkcs11UriTest, RejectsBadNumbers) {
    EXPECT_THAT(error_of("pkcs11:slot-id=x1"), HasSubstr("slot-id: expected a decimal number"));
    EXPECT_THAT(error_of("pkcs11:slot-id="), HasSubstr("expected a decimal number"));
    EXPECT_THAT(error_of("pkcs11:library-version=1.256"), HasSubstr("numbers up to 255"));
}

TEST(Pkcs11UriTest, RejectsBadPercentEscapes) {
    EXPECT_THAT(error_of("pkcs11:object=a%2"), HasSubstr("two hexadecimal digits"));
    EXPECT_THAT(error_of("pkcs11:object=a%zz"), HasSubstr("two hexadecimal digits"));
    EXPECT_THAT(error_of("pkcs11:object=a%"), HasSubstr("two hexadecimal digits"));
}

TEST(Pkcs11UriTest, RejectsUnencodedCharacters) {
    EXPECT_THAT(error_of("pkcs11:object=web key"), HasSubstr("byte 0x20 at offset 3"));
    EXPECT_THAT(error_of("pkcs11:object=a/b"), HasSubstr("'/' at offset 1 must be percent-encoded "
                                                         "in the path part"));
    EXPECT_THAT(error_of("pkcs11:object=a&b"), HasSubstr("'&'"));
    EXPECT_THAT(error_of("pkcs11:object=a\xc3\xa9"), HasSubstr("byte 0xc3"));
}

TEST(Pkcs11UriTest, ErrorsNeverQuoteThePinValue) {
    const std::string message = error_of("pkcs11:token=a?pin-value=secret word");
    EXPECT_THAT(message, HasSubstr("pin-value: a character must be percent-encoded"));
    EXPECT_THAT(message, Not(HasSubstr("secret")));
    EXPECT_THAT(error_of("pkcs11:token=a?pin-value=12%3"), Not(HasSubstr("12")));
}

TEST(Pkcs11UriTest, RejectsMalformedStructure) {
    EXPECT_THAT(error_of("pkcs11"), HasSubstr("starts with \"pkcs11:\""));
    EXPECT_THAT(error_of("file:/x"), HasSubstr("starts with \"pkcs11:\""));
    EXPECT_THAT(error_of("pkcs11:token"), HasSubstr("expected NAME=VALUE"));
    EXPECT_THAT(error_of("pkcs11:=a"), HasSubstr("expected NAME=VALUE"));
    EXPECT_THAT(error_of("pkcs11:token=a;;object=b"), HasSubstr("empty attribute"));
    EXPECT_THAT(error_of("pkcs11:token=a;"), HasSubstr("empty attribute"));
    EXPECT_THAT(error_of("pkcs11:token=a?&"), HasSubstr("empty attribute in the query part"));
}

TEST(Pkcs11UriTest, EmptyQueryIsAccepted) {
    const Uri uri = parse_uri("pkcs11:token=a?");
    EXPECT_EQ(uri.token, "a");
    EXPECT_FALSE(uri.pin_value);
}

TEST(Pkcs11UriTest, DescribeOmitsQueryAndReencodes) {
    const Uri uri = parse_uri(
        "pkcs11:token=pin%20test;object=web%20key%2F1;id=%01;type=private?pin-value=1234");
    const std::string text = uri.describe();
    EXPECT_EQ(text, "pkcs11:token=pin%20test;object=web%20key%2f1;id=%01;type=private");
    EXPECT_THAT(text, Not(HasSubstr("1234")));
    // The description parses back to the same attributes.
    const Uri again = parse_uri(text);
    EXPECT_EQ(again.object, uri.object);
    EXPECT_EQ(again.id, uri.id);
}

TEST(Pkcs11UriTest, FormatsIdAsPercentBytes) {
    EXPECT_EQ(format_id({0x00, 0x1f, 0xab}), "%00%1f%ab");
    EXPECT_EQ(format_id({}), "");
}

}  // namespace
}  // namespace cloister::pkcs11
