process EXTRACT_PATCHES {
    tag "${meta.id}"
    label 'process_medium'

    input:
    tuple val(meta), path(tomogram), path(mask), path(regions)
    val settings

    output:
    tuple val(meta), path("${meta.id}_patches.h5"), emit: patches
    path "versions.yml", emit: versions

    script:
    def args = task.ext.args ?: ''
    def regions_arg = regions ? "--regions ${regions}" : ''
    """
    subtomo-extract \\
        --tomogram ${tomogram} \\
        --mask ${mask} \\
        ${regions_arg} \\
        --output-dir . \\
        ${settings} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """

    stub:
    """
    touch ${meta.id}_patches.h5
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """
}
