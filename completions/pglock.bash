_pglock() {
    local i cur prev opts cmd
    COMPREPLY=()
    if [[ "${BASH_VERSINFO[0]}" -ge 4 ]]; then
        cur="$2"
    else
        cur="${COMP_WORDS[COMP_CWORD]}"
    fi
    prev="$3"
    cmd=""
    opts=""

    for i in "${COMP_WORDS[@]:0:COMP_CWORD}"
    do
        case "${cmd},${i}" in
            ",$1")
                cmd="pglock"
                ;;
            pglock,generate)
                cmd="pglock__subcmd__generate"
                ;;
            pglock,history)
                cmd="pglock__subcmd__history"
                ;;
            pglock,key)
                cmd="pglock__subcmd__key"
                ;;
            pglock,run)
                cmd="pglock__subcmd__run"
                ;;
            pglock,status)
                cmd="pglock__subcmd__status"
                ;;
            *)
                ;;
        esac
    done

    case "${cmd}" in
        pglock)
            opts="-h -V --help --version status history generate run key"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 1 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        pglock__subcmd__generate)
            opts="-h -V --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        pglock__subcmd__history)
            opts="-h -V --key --key-id --key-hashtext --lock-of --lock-schema --lock-table --ledger --json --database-url --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key-id)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key-hashtext)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-of)
                    COMPREPLY=($(compgen -W "golang-migrate golang-migrate-with-instance sqlx rails prisma flyway atlas goose goose-before-3.26 sqitch graphile-migrate node-pg-migrate" -- "${cur}"))
                    return 0
                    ;;
                --lock-schema)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-table)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ledger)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --database-url)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        pglock__subcmd__key)
            opts="-h -V --key-id --key-hashtext --lock-of --lock-schema --lock-table --sql --database-url --limit --fence-sql --ledger-sql --ledger --key --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --key-id)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key-hashtext)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-of)
                    COMPREPLY=($(compgen -W "golang-migrate golang-migrate-with-instance sqlx rails prisma flyway atlas goose goose-before-3.26 sqitch graphile-migrate node-pg-migrate" -- "${cur}"))
                    return 0
                    ;;
                --lock-schema)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-table)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --database-url)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --limit)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ledger)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        pglock__subcmd__run)
            opts="-n -w -E -q -v -h -V --no-wait --timeout --shared --scope --pooler --limit --fencing-token --once --ledger --conflict-exit-code --max-runtime --kill-after --heartbeat --release-after --quiet --verbose --log-format --key --key-id --key-hashtext --lock-of --lock-schema --lock-table --database-url --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -w)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --scope)
                    COMPREPLY=($(compgen -W "session transaction" -- "${cur}"))
                    return 0
                    ;;
                --pooler)
                    COMPREPLY=($(compgen -W "session" -- "${cur}"))
                    return 0
                    ;;
                --limit)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --once)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ledger)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --conflict-exit-code)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -E)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --max-runtime)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --kill-after)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --heartbeat)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --release-after)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --log-format)
                    COMPREPLY=($(compgen -W "text json" -- "${cur}"))
                    return 0
                    ;;
                --key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key-id)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key-hashtext)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-of)
                    COMPREPLY=($(compgen -W "golang-migrate golang-migrate-with-instance sqlx rails prisma flyway atlas goose goose-before-3.26 sqitch graphile-migrate node-pg-migrate" -- "${cur}"))
                    return 0
                    ;;
                --lock-schema)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-table)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --database-url)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        pglock__subcmd__status)
            opts="-h -V --key --key-id --key-hashtext --lock-of --lock-schema --lock-table --json --ledger --database-url --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key-id)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key-hashtext)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-of)
                    COMPREPLY=($(compgen -W "golang-migrate golang-migrate-with-instance sqlx rails prisma flyway atlas goose goose-before-3.26 sqitch graphile-migrate node-pg-migrate" -- "${cur}"))
                    return 0
                    ;;
                --lock-schema)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --lock-table)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ledger)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --database-url)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
    esac
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _pglock -o nosort -o bashdefault -o default pglock
else
    complete -F _pglock -o bashdefault -o default pglock
fi
