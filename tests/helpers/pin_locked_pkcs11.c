/*
 * A PKCS#11 module for the tests: SoftHSM2 in every call but C_Login, which answers
 * CKR_PIN_LOCKED, as a token whose user PIN is locked answers. SoftHSM2 itself never locks a
 * PIN (Token::loginUser counts no failures), so this is how a test meets a real
 * CKR_PIN_LOCKED through python-pkcs11. Built by tests/helpers/softhsm.py with
 * -DREAL_MODULE='"/path/to/libsofthsm2.so"'.
 *
 * Self-contained (no pkcs11.h): CK_FUNCTION_LIST is a CK_VERSION, then 68 function pointers
 * in the order of PKCS#11 v2.40, C_Login the 19th.
 */
#include <dlfcn.h>
#include <string.h>

typedef unsigned long CK_RV;
#define CKR_OK 0x0UL
#define CKR_GENERAL_ERROR 0x5UL
#define CKR_PIN_LOCKED 0xA4UL
#define FUNCTIONS 68
#define C_LOGIN 18

typedef struct {
    unsigned char major, minor;
} version_t;

typedef struct {
    version_t version;
    void *functions[FUNCTIONS];
} function_list_t;

typedef CK_RV (*get_function_list_t)(function_list_t **);

static function_list_t shim;

static CK_RV pin_locked(unsigned long session, unsigned long user, unsigned char *pin,
                        unsigned long length)
{
    (void)session;
    (void)user;
    (void)pin;
    (void)length;
    return CKR_PIN_LOCKED;
}

CK_RV C_GetFunctionList(function_list_t **list)
{
    void *real = dlopen(REAL_MODULE, RTLD_NOW | RTLD_LOCAL);
    get_function_list_t get;
    function_list_t *real_list;

    if (real == NULL)
        return CKR_GENERAL_ERROR;
    get = (get_function_list_t)dlsym(real, "C_GetFunctionList");
    if (get == NULL || get(&real_list) != CKR_OK)
        return CKR_GENERAL_ERROR;
    memcpy(&shim, real_list, sizeof shim);
    shim.functions[C_LOGIN] = (void *)pin_locked;
    *list = &shim;
    return CKR_OK;
}
